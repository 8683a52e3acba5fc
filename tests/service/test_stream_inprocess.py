"""The ingestion stream and the takeover of silent consumers' entries in process,
on a real Redis: the consumer group, the reads, the delivery counts, the dead
letters, the statistics, and the Lua claim behind the reclaimer."""

from __future__ import annotations

from tests.support.inprocess import Rig


async def test_delivery_counts_answer_for_every_entry_held_and_only_those(rig: Rig) -> None:
    await rig.submit(31)
    me, other = rig.consumer(1), rig.consumer(2)
    held = rig.ids(await rig.deliver(me, 30))
    [elsewhere] = rig.ids(await rig.deliver(other, 1))
    await rig.stream.read_own_pending(me, 1)  # the first one delivered again
    asked = [(rig.keys.stream, entry_id) for entry_id in (held[0], held[-1], elsewhere)]

    # 28 entries `me` holds lie between the two it is asked about.
    assert await rig.stream.delivery_counts(me, asked) == {held[0]: 2, held[-1]: 1}
    assert await rig.stream.delivery_counts(other, asked) == {elsewhere: 1}
