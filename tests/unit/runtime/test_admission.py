"""The step rule of `wdmoe.runtime.admission.Slots`: every running item, or with prefill_first the new ones alone."""

from __future__ import annotations

from dataclasses import dataclass

from wdmoe.runtime.admission import Slots


@dataclass(eq=False)
class Item:
    max_tokens: int = 3
    produced: int = 0
    cancelled: bool = False
    finish_reason: str | None = None

    @property
    def started(self) -> bool:
        return self.produced > 0


def step(slots: Slots[Item]) -> list[Item]:
    """Admit, take the step's batch, give each of it a token, retire the finished."""
    slots.admit()
    batch = slots.batch()
    for item in batch:
        item.produced += 1
        if item.produced >= item.max_tokens:
            item.finish_reason = "length"
    slots.take_done()
    return batch


def test_mixed_steps_run_every_running_item() -> None:
    slots: Slots[Item] = Slots(max_batch=8)
    a, b = Item(), Item()
    slots.add(a)
    assert step(slots) == [a]
    slots.add(b)
    assert step(slots) == [a, b]  # b's prefill with a's decode


def test_prefill_first_runs_the_new_items_alone_then_all_together() -> None:
    slots: Slots[Item] = Slots(max_batch=8, prefill_first=True)
    a, b, c = Item(), Item(), Item()
    slots.add(a)
    assert step(slots) == [a]
    slots.add(b)
    slots.add(c)
    assert step(slots) == [b, c]  # the two arrivals prefill together, a's decode waits one step
    assert step(slots) == [a, b, c]
    assert step(slots) == [a, b, c] and not slots.running  # 3 tokens each: all done


def test_prefill_first_admits_no_more_than_room_allows() -> None:
    slots: Slots[Item] = Slots(max_batch=2, prefill_first=True)
    items = [Item() for _ in range(3)]
    for item in items:
        slots.add(item)
    assert step(slots) == items[:2] and list(slots.waiting) == items[2:]


def test_admit_waiting_leaves_the_running_batch_as_it_is() -> None:
    slots: Slots[Item] = Slots(max_batch=2)
    a, b, c, gone = Item(), Item(), Item(), Item(cancelled=True)
    slots.add(a)
    slots.admit()
    a.cancelled = True  # a step is running it: only the next step boundary drops it
    for item in (gone, b, c):
        slots.add(item)
    retired = slots.admit_waiting()
    assert slots.running == [a, b] and list(slots.waiting) == [c]  # room for one more: max_batch counts a
    assert retired == [gone] and gone.finish_reason == "cancelled" and a.finish_reason is None
    assert slots.admit() == [a] and slots.running == [b, c]
