"""The task contract and its registry: how TIER3_TASK is resolved, what a wrong one says, the
widget task's prompt setting, and what the dataset does with traces older than schema v3."""

from __future__ import annotations

import io

import pytest
from fastavro import schemaless_writer
from tier3.schemas import SingleObjectCodec, registry
from tier3.schemas.codec import SINGLE_OBJECT_MAGIC
from tier3.tasks import Task, TaskNotFound, configured_task, load_task, widgets
from tier3.tasks.contract import check_messages, final_answer
from tier3.tasks.registry import ENTRY_POINT_GROUP, registered
from tier3.trainers.training.dataset import build_dataset

from tests.support.samples import SAMPLES


def test_widgets_is_the_default_and_is_registered_as_an_entry_point(monkeypatch) -> None:
    monkeypatch.delenv("TIER3_TASK", raising=False)
    assert configured_task().name == "widgets"
    from importlib.metadata import entry_points

    assert "widgets" in {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert registered()["widgets"] == "tier3.tasks.widgets:task"


def test_a_dotted_path_loads_a_task_or_a_factory(monkeypatch) -> None:
    monkeypatch.setenv("TIER3_TASK", "tests.support.custom_task:task")
    assert configured_task().name == "ticket-triage"
    made = load_task("tests.support.custom_task:task")
    assert isinstance(made, Task) and load_task(" tier3.tasks.widgets:task ").name == "widgets"


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("triage", "no task is registered under that name (registered: widgets"),
        ("no_such_module.anywhere:task", "cannot import module 'no_such_module.anywhere'"),
        ("tests.support.custom_task:nope", "module 'tests.support.custom_task' has no 'nope'"),
        ("tests.support.custom_task:not_a_task", "is a dict, not a tier3 Task"),
        ("tests.support.custom_task:", "a dotted path is 'package.module:attr'"),
        (
            "tests.support.custom_task:teacher_reply",
            "tests.support.custom_task:teacher_reply() failed: TypeError",
        ),
    ],
)
def test_a_task_that_cannot_be_loaded_names_the_setting(monkeypatch, spec: str, says: str) -> None:
    monkeypatch.setenv("TIER3_TASK", spec)
    with pytest.raises(TaskNotFound) as caught:
        configured_task()
    message = str(caught.value)
    assert message.startswith(f"TIER3_TASK={spec.strip()!r}: ")
    assert says in message
    if ":" not in spec:
        assert ENTRY_POINT_GROUP in message  # where to register one


def test_the_widget_prompt_is_the_widget_tasks_setting(monkeypatch) -> None:
    context = {"screen": "mobile", "page": "ops"}
    default = widgets.task().render("plot latency", context)
    assert default == [{"role": "user", "content": widgets.render_prompt("plot latency", context)}]
    monkeypatch.setenv("TIER3_PROMPT_TEMPLATE", "Q=$query C=$context")
    [custom] = widgets.task().render("plot latency", context)
    assert custom["content"] == 'Q=plot latency C={"page": "ops", "screen": "mobile"}'


def test_a_task_whose_messages_are_malformed_fails_at_render() -> None:
    with pytest.raises(ValueError, match="last message must be the user's"):
        check_messages([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                       "task 'x'")
    with pytest.raises(ValueError, match="role in"):
        check_messages([{"role": "tool", "content": "q"}], "task 'x'")
    assert final_answer("<think>hm</think>\n{}") == "{}" and final_answer("<think>open") == ""


def _written_by(version: registry.SchemaVersion, record: dict) -> bytes:
    fields = {f["name"] for f in version.raw["fields"]}
    buf = io.BytesIO()
    schemaless_writer(buf, version.parsed, {k: v for k, v in record.items() if k in fields})
    return SINGLE_OBJECT_MAGIC + version.fingerprint + buf.getvalue()


def test_traces_older_than_v3_are_rendered_with_the_task_and_counted(monkeypatch) -> None:
    monkeypatch.delenv("TIER3_TASK", raising=False)
    codec = SingleObjectCodec()
    sample = {**SAMPLES["Trace"], "context": '{"page": "ops"}',
              "teacher_answer": '{"widgets": ["bar_chart"], "primary_metric": "revenue", '
                                '"appropriateness": 0.9}'}
    traces = {}
    for old in registry.history("Trace"):
        record = codec.decode(_written_by(old, {**sample, "query_id": f"v{old.version}"})).record
        assert record["teacher_messages"] == []
        traces[record["query_id"]] = record
    current = {**sample, "query_id": "v3"}
    traces["v3"] = codec.decode(codec.encode("Trace", current)).record
    request = {"request_id": "r", "model": "m", "query_ids": sorted(traces)}

    built = build_dataset(request, traces, eval_share=0.0, base_model="tiny")

    by_id = {e["query_id"]: e["messages"] for e in built.train}
    rendered = widgets.task().render(sample["query"], {"page": "ops"})
    assert by_id["v1"][:-1] == by_id["v2"][:-1] == rendered
    assert by_id["v3"][:-1] == sample["teacher_messages"]  # recorded: never re-rendered
    assert built.manifest["rendered_prompts"] == 2 and built.manifest["task"] == "widgets"
