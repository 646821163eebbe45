from __future__ import annotations

from datetime import timezone
from typing import Any

import pytest

from grokimagine_async import (
    FailureKind,
    GenerateRequest,
    RequestValidationError,
    Task,
    TaskState,
    Unchecked,
)


def build(**fields: Any) -> GenerateRequest:
    return GenerateRequest.build(None, **fields)


def test_request_defaults_and_payload() -> None:
    req = build(prompt="a fox in the snow")
    assert req.to_payload() == {"mode": "normal", "prompt": "a fox in the snow", "ratio": "1:1"}


def test_images_single_string_is_wrapped_and_sent_as_array() -> None:
    req = build(prompt="kite", images="https://example.com/kite.png")
    assert req.to_payload()["images"] == ["https://example.com/kite.png"]


def test_mode_and_ratio_are_normalised_case_insensitively() -> None:
    req = build(prompt="p", mode=" Spicy", ratio="2:3")
    assert (req.mode, req.ratio) == ("spicy", "2:3")


@pytest.mark.parametrize(
    ("fields", "field", "needle"),
    [
        ({}, "prompt", "prompt='a fox"),
        ({"prompt": ""}, "prompt", "Describe the video"),
        ({"prompt": "   "}, "prompt", "Describe the video"),
        ({"prompt": 42}, "prompt", "text"),
        ({"prompt": "p", "mode": "wild"}, "mode", "Unchecked('wild')"),
        ({"prompt": "p", "ratio": "16:9"}, "ratio", "Unchecked('16:9')"),
        ({"prompt": "p", "images": ["ftp://x/y.png"]}, "images", "http(s) URL"),
        ({"prompt": "p", "images": ["not a url"]}, "images", "Upload the image"),
        ({"prompt": "p", "images": 3}, "images", "list of image URLs"),
        ({"prompt": "p", "promt": "x"}, "promt", "check the spelling"),
    ],
)
def test_validation_names_field_and_fix(fields: dict[str, Any], field: str, needle: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        GenerateRequest.build(fields)
    assert info.value.field == field
    assert needle in str(info.value)
    assert str(info.value).startswith(f"{field}")


def test_unchecked_values_pass_as_given() -> None:
    req = build(prompt="p", ratio=Unchecked("16:9"), mode=Unchecked("turbo"))
    assert req.to_payload()["ratio"] == "16:9"
    assert req.to_payload()["mode"] == "turbo"


def test_build_merges_keywords_over_a_mapping_and_keeps_models() -> None:
    base = build(prompt="p", mode="fun")
    assert GenerateRequest.build(base) is base
    assert GenerateRequest.build(base, ratio="3:2").mode == "fun"
    assert GenerateRequest.build({"prompt": "x"}, prompt="y").prompt == "y"


DOC_EXAMPLE = {
    "consumed_credits": 40,
    "created_at": "2024-01-01T00:00:00Z",
    "status": "completed",
    "task_id": "task_123456789",
    "error_message": None,
    "request": {"mode": "fun", "prompt": "a beautiful landscape with mountains", "ratio": "1:1"},
    "response": [
        "https://cdn.example.com/generated/video1.mp4",
        "https://cdn.example.com/generated/video2.mp4",
    ],
}


def test_task_parses_the_documented_example() -> None:
    task = Task.model_validate(DOC_EXAMPLE)
    assert task.state is TaskState.COMPLETED
    assert list(task.videos) == DOC_EXAMPLE["response"]
    assert task.created_at is not None
    assert task.created_at.tzinfo is not None
    assert task.created_at.year == 2024
    assert task.consumed_credits == 40
    assert task.failure_kind is None


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("pending", TaskState.PENDING),
        ("QUEUED", TaskState.PENDING),
        ("queuing", TaskState.PENDING),
        ("waiting", TaskState.PENDING),
        ("processing", TaskState.RUNNING),
        ("generating", TaskState.RUNNING),
        ("running", TaskState.RUNNING),
        ("in_progress", TaskState.RUNNING),
        ("In Progress", TaskState.RUNNING),
        ("completed", TaskState.COMPLETED),
        ("Success", TaskState.COMPLETED),
        ("succeeded", TaskState.COMPLETED),
        ("done", TaskState.COMPLETED),
        ("failed", TaskState.FAILED),
        ("fail", TaskState.FAILED),
        ("error", TaskState.FAILED),
        ("expired", TaskState.FAILED),
        ("cancelled", TaskState.FAILED),
        ("canceled", TaskState.FAILED),
        ("something-new", TaskState.RUNNING),
        ("", TaskState.RUNNING),
    ],
)
def test_status_words_normalise(word: str, state: TaskState) -> None:
    assert Task(task_id="t", raw_status=word).state is state


def test_error_message_means_failed_whatever_the_status() -> None:
    task = Task.model_validate({"task_id": "t", "status": "completed", "error_message": "boom"})
    assert task.state is TaskState.FAILED


@pytest.mark.parametrize(
    ("message", "kind", "resubmit"),
    [
        ("File type not supported", FailureKind.UNSUPPORTED_FILE, False),
        ("Inappropriate content, please try another prompt.", FailureKind.CONTENT_REFUSED, False),
        ("grok imagine build failed", FailureKind.UPSTREAM_BUILD, True),
        ("Network error, please try again later.", FailureKind.TRANSIENT_NETWORK, True),
        ("the moon is in the wrong phase", FailureKind.UNKNOWN, False),
        ("Upstream timeout fetching content", FailureKind.TRANSIENT_NETWORK, True),
    ],
)
def test_failure_kinds(message: str, kind: FailureKind, resubmit: bool) -> None:
    task = Task.model_validate({"task_id": "t", "status": "failed", "error_message": message})
    assert task.failure_kind is kind
    assert task.resubmit_may_succeed is resubmit


def test_completed_with_no_videos_and_odd_fields_does_not_crash() -> None:
    task = Task.model_validate(
        {
            "task_id": 12345,
            "status": "completed",
            "response": None,
            "created_at": "not a date",
            "consumed_credits": "40",
            "request": "?",
            "extra_field": 1,
        }
    )
    assert task.task_id == "12345"
    assert task.videos == ()
    assert task.created_at is None
    assert task.consumed_credits == 40
    assert task.request is None
    assert task.model_extra == {"extra_field": 1}


def test_naive_and_epoch_timestamps_become_aware_utc() -> None:
    naive = Task.model_validate({"task_id": "t", "created_at": "2024-01-01T00:00:00"})
    epoch_ms = Task.model_validate({"task_id": "t", "created_at": 1_704_067_200_000})
    assert naive.created_at == epoch_ms.created_at
    assert naive.created_at is not None
    assert naive.created_at.tzinfo == timezone.utc


def test_building_the_model_directly_raises_our_error() -> None:
    with pytest.raises(RequestValidationError) as info:
        GenerateRequest(prompt="", mode="wild")
    assert info.value.field == "prompt"


def test_problem_and_fix_are_kept_apart() -> None:
    with pytest.raises(RequestValidationError) as info:
        build(prompt="p", ratio="16:9")
    assert info.value.problem == "'16:9' is not a documented ratio (documented: 1:1, 2:3, 3:2)"
    assert info.value.fix.startswith("Fix the spelling")


def test_unchecked_values_survive_a_rebuild() -> None:
    req = build(prompt="a", ratio=Unchecked("16:9"))
    assert GenerateRequest.build(req, prompt="b").ratio == "16:9"


def test_infinite_credits_do_not_crash() -> None:
    assert (
        Task.model_validate({"task_id": "t", "consumed_credits": float("inf")}).consumed_credits
        is None
    )


def test_task_names_say_which_status_is_which() -> None:
    task = Task.model_validate({"task_id": "t", "status": "Succeeded", "request": {"a": 1}})
    assert task.raw_status == "Succeeded"
    assert task.state is TaskState.COMPLETED
    with pytest.warns(DeprecationWarning, match="raw_status"):
        assert task.status == "Succeeded"
    # The server's field name survives a round trip through JSON (the journal, --json).
    dumped = task.model_dump(mode="json", by_alias=True)
    assert dumped["status"] == "Succeeded"
    assert Task.model_validate(dumped) == task


def test_a_task_with_its_request_echoed_is_hashable() -> None:
    task = Task.model_validate({"task_id": "t", "status": "done", "request": {"prompt": "x"}})
    same = Task.model_validate({"task_id": "t", "status": "done", "request": {"prompt": "x"}})
    assert {task, same} == {task}
