"""BIG-bench JSON tasks: `python -m tasks.bigbench prepare` fetches them once,
`register_bigbench()` registers them from the cache (done by `import tasks`
when the cache exists). See `fetch` (the download and cache layout), `parse` (the JSON
schema and prompt format) and `register` (train / held-out split)."""

from tasks.bigbench.parse import parse_task
from tasks.bigbench.fetch import default_cache_dir, prepare
from tasks.bigbench.register import FAMILY, available, register_bigbench, task_name
