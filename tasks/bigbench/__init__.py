"""BIG-bench JSON tasks: `python -m tasks.bigbench prepare` fetches and parses them once,
`register_bigbench()` registers them from the cache (done by `import tasks` when the
cache exists). See `fetch` (the download), `parse` (BIG-bench's prompt format, shuffle,
de-duplication and scores), `store` (the parsed records on disk), `register` (train /
held-out split) and `mixture` (the training mixture's one input pipeline, truncation)."""

from tasks.bigbench.parse import bigbench_prompt, parse_examples, parse_task
from tasks.bigbench.fetch import default_cache_dir, prepare
from tasks.bigbench.register import (FAMILY, TRAIN_MIXTURE, available, read_index,
                                     missing_data_message, register_bigbench, task_name)
