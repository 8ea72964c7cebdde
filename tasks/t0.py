"""T0 held-out evaluation tasks (T-Few's benchmark) from local TFDS data, as rank classification.

One prompt per task, in the style of T0's promptsource templates; the answer
choices are scored by the evaluator (rank classification). TFDS data is read
from the local TFDS data dir (`tfds_data_dir`, default TFDS's); nothing is
downloaded at registration.

Our splits -> TFDS splits (unlabelled TFDS test splits are not used):

  task                 train       validation   test
  t0_rte/cb/copa/wic/wsc   train   validation   validation   (super_glue/*)
  t0_anli_r{1,2,3}     train       validation   test         (anli/r*)
  t0_hellaswag         train       validation   validation   (hellaswag)
  t0_winogrande        train_xl    validation   validation   (winogrande)
  t0_story_cloze       validation  test         test         (story_cloze/2016, no train)

Few-shot subsets come from `train`, so they never overlap `test`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from tasks import preprocessors, registry, sources

FAMILY = "t0"
_SUPER_GLUE_SPLITS = {"train": "train", "validation": "validation", "test": "validation"}


def _join(*parts) -> tf.Tensor:
  return tf.strings.join([tf.strings.strip(p) if isinstance(p, tf.Tensor) else p for p in parts])


def _mc(inputs, choices, label) -> dict:
  """The multiple-choice record schema from TF tensors."""
  choices = tf.convert_to_tensor(choices, tf.string)
  label = tf.cast(label, tf.int32)
  return {"inputs": inputs, "targets": tf.gather(choices, label), "choices": choices,
          "label": label}


def _nli(premise_key: str, choices: Sequence[str]) -> Callable:
  """'{premise} Question: {hypothesis} True, False, or Neither?' (choices in label order)."""
  question = " True or False?" if len(choices) == 2 else " True, False, or Neither?"
  return lambda ex: _mc(_join(ex[premise_key], " Question: ", ex["hypothesis"], question),
                        choices, ex["label"])


def _copa(ex):
  connector = tf.where(tf.equal(ex["question"], "cause"), " because", " so")
  premise = tf.strings.regex_replace(tf.strings.strip(ex["premise"]), r"\.$", "")

  def lower_first(s):
    s = tf.strings.strip(s)
    return tf.strings.join([tf.strings.lower(tf.strings.substr(s, 0, 1)),
                            tf.strings.substr(s, 1, -1)])

  return _mc(tf.strings.join([premise, connector]),
             tf.stack([lower_first(ex["choice1"]), lower_first(ex["choice2"])]), ex["label"])


def _wic(ex):
  return _mc(_join(ex["sentence1"], "\n", ex["sentence2"], "\nQuestion: Is the word '",
                   ex["word"], "' used in the same sense in the two sentences above? Yes, No?"),
             ["No", "Yes"], ex["label"])


def _wsc(ex):
  return _mc(_join(ex["text"], " In the previous sentence, does the pronoun \"",
                   ex["span2_text"], "\" refer to ", ex["span1_text"], "? Yes or no?"),
             ["No", "Yes"], ex["label"])


def _hellaswag(ex):
  return _mc(_join("Complete the description with an appropriate ending:\n", ex["context"]),
             tf.strings.strip(ex["endings"]), ex["label"])


def _winogrande(ex):
  return _mc(_join(ex["sentence"], "\nReplace the _ in the above sentence with the correct "
                   "option:\n- ", ex["option1"], "\n- ", ex["option2"]),
             tf.stack([tf.strings.strip(ex["option1"]), tf.strings.strip(ex["option2"])]),
             ex["label"])


def _story_cloze(ex):
  endings = tf.strings.strip(ex["endings"])
  return _mc(_join(ex["context"], "\nWhat is a possible continuation for the story given the "
                   "following options?\n- ", endings[0], "\n- ", endings[1]),
             endings, tf.cast(ex["label"], tf.int32) - 1)  # TFDS story_cloze labels are 1-based


@dataclasses.dataclass(frozen=True)
class T0Task:
  name: str
  tfds_name: str
  splits: Mapping[str, str]
  format_fn: Callable[[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]]
  label_offset: int = 0  # unlabelled examples have label < label_offset


T0_TASKS = (
    T0Task("t0_rte", "super_glue/rte:1.0.2", _SUPER_GLUE_SPLITS, _nli("premise", ["True", "False"])),
    T0Task("t0_cb", "super_glue/cb:1.0.2", _SUPER_GLUE_SPLITS,
           _nli("premise", ["True", "False", "Neither"])),
    T0Task("t0_copa", "super_glue/copa:1.0.2", _SUPER_GLUE_SPLITS, _copa),
    T0Task("t0_wic", "super_glue/wic:1.0.2", _SUPER_GLUE_SPLITS, _wic),
    T0Task("t0_wsc", "super_glue/wsc.fixed:1.0.2", _SUPER_GLUE_SPLITS, _wsc),
    *(T0Task(f"t0_anli_r{r}", f"anli/r{r}:0.1.0",
             {"train": "train", "validation": "validation", "test": "test"},
             _nli("context", ["True", "Neither", "False"])) for r in (1, 2, 3)),
    T0Task("t0_hellaswag", "hellaswag:1.1.0",
           {"train": "train", "validation": "validation", "test": "validation"}, _hellaswag),
    T0Task("t0_winogrande", "winogrande:1.2.0",
           {"train": "train_xl", "validation": "validation", "test": "validation"}, _winogrande),
    T0Task("t0_story_cloze", "story_cloze/2016:1.0.0",
           {"train": "validation", "validation": "test", "test": "test"}, _story_cloze,
           label_offset=1),
)


def format_preprocessors(task: T0Task) -> tuple:
  """Drops unlabelled examples, then applies the prompt (record schema of `sources`)."""

  def labelled(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.filter(lambda ex: tf.cast(ex["label"], tf.int32) >= task.label_offset)

  return (labelled, preprocessors.map_examples(task.format_fn))


def tfds_source(task: T0Task, tfds_data_dir: Optional[str] = None) -> seqio.DataSource:
  return seqio.TfdsDataSource(task.tfds_name, tfds_data_dir=tfds_data_dir,
                              splits=dict(task.splits))


def register_t0(vocabulary: Optional[seqio.Vocabulary] = None,
                tfds_data_dir: Optional[str] = None,
                source_fn: Optional[Callable[[T0Task], seqio.DataSource]] = None
                ) -> registry.Family:
  """Registers the T0 held-out tasks (task ids 0..10 in T0_TASKS order).

  source_fn: builds each task's data source (default: its local TFDS
  dataset); tests pass records in TFDS's feature format instead.
  """
  registry.remove_family(FAMILY)
  source_fn = source_fn or (lambda t: tfds_source(t, tfds_data_dir))
  for task_id, task in enumerate(T0_TASKS):
    registry.add_task(registry.TaskSpec(
        name=task.name, family=FAMILY, role="heldout", kind=sources.MULTIPLE_CHOICE,
        source=source_fn(task), format_preprocessors=format_preprocessors(task),
        task_id=task_id, metric_names=("accuracy",)), vocabulary=vocabulary)
  fam = registry.Family(FAMILY, [], [t.name for t in T0_TASKS], None,
                        sequence_length={"inputs": 256, "targets": 64})
  registry.set_family(fam)
  return fam
