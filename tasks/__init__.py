"""Tasks: what the traffic is about (prompt, answer, comparison, offline rules), behind one
contract (``contract.Task``) and one setting (``TIER3_TASK``, ``registry``). See docs/tasks.md."""

from tier3.tasks.contract import ChatMessage, Query, Task
from tier3.tasks.registry import TaskNotFound, configured_task, load_task

__all__ = ["ChatMessage", "Query", "Task", "TaskNotFound", "configured_task", "load_task"]
