"""The fact batches: the dev batch shares no prompt with the held-out batches or the demo, every edit names a
subject that occurs in its prompt, and the CLI refuses an unknown batch."""

import pytest

from easyedit_kne import demo
from easyedit_kne.bench import heldout


def _prompts(batch):
    return {p for p, *_ in batch["edits"]} | set(batch["neighbours"]) | set(batch["unrelated"])


def test_dev_batch_is_disjoint_from_the_held_out_batches_and_the_demo():
    dev = set().union(*(_prompts(b) for b in heldout.DEV_BATCHES.values()))
    held = set().union(*(_prompts(b) for b in heldout.BATCHES.values()))
    shown = {p for p, *_ in demo.EDITS} | set(demo.NEIGHBOURS) | set(demo.UNRELATED)
    assert not dev & held and not dev & shown


@pytest.mark.parametrize("batch", [*heldout.BATCHES.values(), *heldout.DEV_BATCHES.values()])
def test_every_edit_names_its_subject(batch):
    requests = heldout.batch_requests(batch)
    assert len(requests) == 8 and len(batch["neighbours"]) == 4 and len(batch["unrelated"]) == 20
    assert all(r["subject"] and r["subject"] in r["prompt"] for r in requests)


def test_demo_edits_name_their_subjects():
    assert all(subject in prompt for prompt, _, _, subject in demo.EDITS)


def test_unknown_batch_is_refused():
    with pytest.raises(SystemExit):
        heldout.main(["x.yaml", "--batches", "AZ"])
