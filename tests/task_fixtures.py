"""Tiny on-disk stand-ins for the real data families, shared by the tests.

    write_bigbench_sdist(path, fmt)   BIG-bench's sdist (or wheel) layout, 5 task files
    write_ni_clone(root)              a natural-instructions clone: tasks/ + splits/default/
    t0_fixture_source(task)           T0 held-out records in TFDS's feature format
    write_p3_dir(root)                P3's layout: data/<dataset>_<prompt>/*.tfrecord-*
    save_hf_checkpoint_with_vocab(d)  a tiny HF T5 directory with spiece.model

Nothing here downloads anything.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zipfile
from typing import Optional

import seqio

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
T0_RECORDS = os.path.join(FIXTURES, "t0_tfds_records.json")
SEQIO_SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                         "sentencepiece.model")
EXTRA_IDS = 100

# ---------------------------------------------------------------- BIG-bench
BB_MC_TASK = {
    "name": "toy_mc", "description": "pick", "keywords": ["multiple choice"],
    "task_prefix": "Answer the question.\n",
    "example_input_prefix": "\nQuestion: ", "example_output_prefix": "\nAnswer: ",
    "choice_prefix": "\n option: ",
    "examples": [{"input": f"Is {i} even?", "target_scores": {"yes": int(i % 2 == 0),
                                                            "no": int(i % 2 == 1)}}
                 for i in range(20)],
}
BB_GEN_TASK = {
    "name": "toy_gen", "description": "copy", "keywords": [],
    "examples": ([{"input": f"say {w}", "target": w} for w in
                  ["red", "green", "blue", "cyan", "pink", "gray", "gold", "teal"]] +
                 [{"input": "a colour with two names", "target": ["grey", "gray"]}]),
}
# BIG-bench's rules in one task: a seeded choice shuffle independent of the JSON order,
# tied and fractional target scores, an exact duplicate (example 2 repeats example 0).
BB_SHUFFLE_TASK = {
    "name": "toy_shuffle", "description": "shuffle, ties, duplicates", "keywords": [],
    "metrics": ["multiple_choice_grade"], "preferred_score": "multiple_choice_grade",
    "task_prefix": "Answer briefly.\n",
    "examples": [
        {"input": "Which colour is the sky?",
         "target_scores": {"blue": 1, "red": 0, "green": 0, "yellow": 0}},
        {"input": "How many sides has a triangle?",
         "target_scores": {"3": 1, "three": 1, "4": 0, "four": 0, "5": 0}},
        {"input": "Which colour is the sky?",
         "target_scores": {"blue": 1, "red": 0, "green": 0, "yellow": 0}},
        {"input": "Which colour is the sky?",
         "target_scores": {"red": 0, "yellow": 0, "green": 0, "blue": 1}},
        {"input": "Pick a vowel.", "target_scores": {"b": 0, "a": 0.5, "e": 0.5}},
    ]}
BB_PARENT_WITH_SUBTASKS = {"name": "toy_parent", "description": "has subtasks", "keywords": []}
BB_SUBTASK = {"name": "toy_parent:easy", "description": "sub", "keywords": [],
              "append_choices_to_input": False,
              "examples": [{"input": f"{i}+1?", "target_scores": {str(i + 1): 1, str(i + 2): 0}}
                           for i in range(6)]}


def write_bigbench_sdist(path: str, fmt: str = "tar", more_tasks: Optional[dict] = None) -> str:
  """Writes the five toy task files in bigbench==1.0.0's sdist ('tar') or wheel ('zip') layout.

  more_tasks: {task directory: task JSON} written beside them.
  """
  files = {
      "toy_mc/task.json": BB_MC_TASK, "toy_gen/task.json": BB_GEN_TASK,
      "toy_parent/task.json": BB_PARENT_WITH_SUBTASKS, "toy_parent/easy/task.json": BB_SUBTASK,
      "toy_shuffle/task.json": BB_SHUFFLE_TASK,
      **{f"{name}/task.json": task for name, task in (more_tasks or {}).items()},
  }
  prefix = "bigbench-1.0.0/bigbench/benchmark_tasks/"
  extra = {"bigbench-1.0.0/setup.py": "", prefix + "toy_mc/README.md": "not a task"}
  if fmt == "tar":
    with tarfile.open(path, "w:gz") as tf:
      for name, content in [*((prefix + k, json.dumps(v)) for k, v in files.items()),
                            *extra.items()]:
        data = content.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
  elif fmt == "zip":
    with zipfile.ZipFile(path, "w") as zf:
      for k, v in files.items():
        zf.writestr("bigbench/benchmark_tasks/" + k, json.dumps(v))
  else:
    raise ValueError(f"fmt={fmt!r}; valid choices: ['tar', 'zip']")
  return path


def fake_bigbench_download(dest: str) -> str:
  """A `download` callable for `tasks.bigbench.fetch.prepare`."""
  return write_bigbench_sdist(os.path.join(dest, "bigbench-1.0.0.tar.gz"))


# ------------------------------------------------------- NaturalInstructions
def ni_task(name: str, n: int, outputs=lambda i: [f"out{i}"]) -> dict:
  """One task file: a definition, 3 positive + 1 negative demonstrations, n instances."""
  return {
      "Definition": [f"Do the {name} thing."],
      "Positive Examples": [{"input": "x1", "output": "y1", "explanation": "."},
                            {"input": "x2", "output": "y2.", "explanation": "."},
                            {"input": "x3", "output": "y3", "explanation": "."}],
      "Negative Examples": [{"input": "bad", "output": "worse", "explanation": "."}],
      "Instances": [{"id": f"{name}-{i}", "input": f"{name} input {i}", "output": outputs(i)}
                    for i in range(n)],
  }


def write_ni_clone(root: str) -> str:
  """Two training tasks (alpha: 30, beta: 10 instances), one test task (gamma: 20,
  two answers each) and a test task listed in the split but missing on disk."""
  os.makedirs(os.path.join(root, "tasks"), exist_ok=True)
  split_dir = os.path.join(root, "splits", "default")
  os.makedirs(split_dir, exist_ok=True)
  files = {"task001_alpha": ni_task("alpha", 30), "task002_beta": ni_task("beta", 10),
           "task003_gamma": ni_task("gamma", 20, outputs=lambda i: [f"g{i}", f"G{i}"])}
  for name, content in files.items():
    with open(os.path.join(root, "tasks", f"{name}.json"), "w") as f:
      json.dump(content, f)
  with open(os.path.join(split_dir, "train_tasks.txt"), "w") as f:
    f.write("task001_alpha\ntask002_beta\n")
  with open(os.path.join(split_dir, "test_tasks.txt"), "w") as f:
    f.write("task003_gamma\ntask999_missing\n")
  return root


# ------------------------------------------------------------------------ T0
def t0_fixture_source(task) -> seqio.DataSource:
  """`tasks.t0.register_t0(source_fn=...)`: the fixture records for every split."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with open(T0_RECORDS) as f:
    records = json.load(f)[task.name]

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    columns = {}
    for key in records[0]:
      values = [r[key] for r in records]
      # TFDS gives int64 class labels / ints and strings (or string sequences).
      columns[key] = tf.constant(values, tf.int64 if isinstance(values[0], int) else tf.string)
    return tf.data.Dataset.from_tensor_slices(columns)

  return seqio.FunctionDataSource(dataset_fn, splits=tuple(task.splits))


# ------------------------------------------------------------------------ P3
# prompt directory -> (number of train examples, write stats.train.json?, validation too?)
P3_DIRS = {
    "ag_news_classify": (6, True, True),
    "ag_news_which_section": (4, False, False),
    "adversarial_qa_dbert_answer_the_following_q": (5, True, False),
    "adversarial_qa_dbidaf_answer_the_following_q": (3, False, False),
    "dream_answer_to_dialogue": (7, True, False),
    # Not T0 training sets: an eval-only variant, a held-out set, a T0+ addition.
    "ag_news_classify_score_eval": (2, False, False),
    "super_glue_rte_GPT_3_style": (2, False, False),
    "openbookqa_main_choose_an_answer": (2, False, False),
}


def p3_text(prompt_dir: str, split: str, i: int) -> tuple[str, str]:
  return f"  {prompt_dir} {split} question {i}? ", f" answer {i} "


def write_p3_dir(root: str) -> str:
  """A P3 copy: tf.Example records with *_pretokenized strings and (ignored) token ids."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def example(inputs: str, targets: str) -> bytes:
    feats = {
        "inputs_pretokenized": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[inputs.encode()])),
        "targets_pretokenized": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[targets.encode()])),
        "inputs": tf.train.Feature(int64_list=tf.train.Int64List(value=[5, 6, 7])),
        "targets": tf.train.Feature(int64_list=tf.train.Int64List(value=[8, 1])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()

  for name, (n, stats, validation) in P3_DIRS.items():
    d = os.path.join(root, "data", name)
    os.makedirs(d, exist_ok=True)
    for split, count in [("train", n)] + ([("validation", 2)] if validation else []):
      with tf.io.TFRecordWriter(os.path.join(d, f"{split}.tfrecord-00000-of-00001")) as w:
        for i in range(count):
          w.write(example(*p3_text(name, split, i)))
    if stats:
      with open(os.path.join(d, "stats.train.json"), "w") as f:
        json.dump({"examples": n, "inputs_max_tokens": 12}, f)
  return root


# ---------------------------------------------------------- HF checkpoints
def save_hf_checkpoint_with_vocab(directory: str, **model_kwargs) -> str:
  """A tiny random v1.1 HF T5 directory that also holds seqio's test spiece.model.

  Its vocabulary (26 pieces + 100 sentinels) matches the model's vocab_size,
  as a real T5 checkpoint's does. `model_kwargs` go to `tiny_hf_t5`.
  """
  from tests.hf_reference import save_tiny_hf_t5, tiny_hf_t5  # pylint: disable=g-import-not-at-top
  vocab_size = seqio.SentencePieceVocabulary(SEQIO_SPM).vocab_size + EXTRA_IDS
  save_tiny_hf_t5(tiny_hf_t5("v1.1", vocab_size=vocab_size, **model_kwargs), directory)
  shutil.copy(SEQIO_SPM, os.path.join(directory, "spiece.model"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"extra_ids": EXTRA_IDS}, f)
  return directory
