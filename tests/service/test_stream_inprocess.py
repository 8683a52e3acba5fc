"""The ingestion stream and the takeover of silent consumers' entries in process,
on a real Redis: the consumer group, the reads, the delivery counts, the dead
letters, the statistics, and the Lua claim behind the reclaimer."""

from __future__ import annotations

import asyncio
import itertools

from shield_orchestrator.queue.liveness import Reclaimer, WorkerState
from shield_orchestrator.queue.redis_text import StreamEntry, stream_id_key
from shield_orchestrator.queue.stream import QueueStats

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


def chunks_of(entries: list[StreamEntry]) -> list[tuple[str, str, str]]:
    """(stream, job id, chunk index) of each entry read."""
    return [(stream, fields["job_id"], fields["index"]) for stream, _id, fields in entries if fields is not None]


async def test_the_group_is_made_once_and_high_priority_entries_are_read_first(rig: Rig) -> None:
    rig.r.delete(*rig.keys.streams)  # Redis flushed: the group is made again, on both streams
    assert await rig.stream.ensure_group() is True
    assert await rig.stream.ensure_group() is False
    assert [[group["name"] for group in rig.r.xinfo_groups(stream)] for stream in rig.keys.streams] == [
        [rig.keys.group],
        [rig.keys.group],
    ]
    normal = await rig.submit(2)
    urgent = await rig.submit(1, priority="high")
    me = rig.consumer()

    assert chunks_of(await rig.deliver(me)) == [(rig.keys.high, urgent, "0")]
    assert chunks_of(await rig.deliver(me)) == [(rig.keys.stream, normal, "0"), (rig.keys.stream, normal, "1")]
    assert await rig.deliver(me) == []
    assert await rig.stream.stats() == QueueStats(queue_depth=3, pending=3, dead_letters=0, high_priority_depth=1)


async def test_a_dead_letter_leaves_the_stream_with_its_error_in_one_step(rig: Rig) -> None:
    await rig.submit(2)
    me = rig.consumer()
    (stream, entry_id, fields), (_stream, kept, _fields) = await rig.deliver(me)
    assert fields is not None

    await rig.stream.dead_letter(stream, entry_id, fields, error="x" * 3000, attempts=3, consumer=me)

    [letter] = rig.dead_letters()
    assert letter == {
        **fields,
        "original_id": entry_id,
        "original_stream": stream,
        "error": "x" * 2000,
        "attempts": "3",
        "consumer": me,
        "dead_lettered_at": letter["dead_lettered_at"],
    }
    assert rig.pending() == {me: [kept]}
    assert rig.depth() == 1
    assert await rig.stream.stats() == QueueStats(queue_depth=1, pending=1, dead_letters=1, high_priority_depth=0)


async def test_only_a_consumer_whose_heartbeat_lapsed_loses_its_entries(rig: Rig) -> None:
    await rig.submit(3)
    silent, live, me = "gone-host-worker-1", "busy-host-worker-1", rig.consumer()
    taken = await rig.deliver(silent, 2)
    [kept] = rig.ids(await rig.deliver(live, 1))
    await rig.heartbeats.beat([WorkerState(live, "processing", 0)])

    assert await rig.stream.claim_from_silent(live, me, 100) == []
    assert await rig.stream.claim_from_silent(silent, me, 100) == taken  # with their fields
    assert rig.pending() == {live: [kept], me: rig.ids(taken)}
    assert rig.deliveries() == {kept: 1, **{entry_id: 2 for entry_id in rig.ids(taken)}}

    rig.r.delete(rig.keys.heartbeat(live))  # its heartbeat lapses
    assert rig.ids(await rig.stream.claim_from_silent(live, me, 100)) == [kept]
    assert rig.pending() == {me: sorted([kept, *rig.ids(taken)], key=stream_id_key)}


async def test_a_reclaim_scan_empties_silent_consumers_into_an_inbox_and_forgets_the_empty_ones(rig: Rig) -> None:
    await rig.submit(3)
    silent, live, idle, me = "gone-host-worker-1", "busy-host-worker-1", "idle-host-worker-1", rig.consumer()
    taken = await rig.deliver(silent, 2)
    kept = rig.ids(await rig.deliver(live, 1))
    assert await rig.deliver(idle) == []  # it joined the group holding nothing
    await rig.heartbeats.beat([WorkerState(live, "processing", 0)])
    inbox: asyncio.Queue[list[StreamEntry]] = asyncio.Queue()
    reclaimer = Reclaimer(rig.stream, rig.heartbeats, interval=1)

    assert await reclaimer.scan({me: inbox}, itertools.cycle([me])) == 2
    assert inbox.get_nowait() == taken
    assert inbox.empty()
    assert [info.name for info in await rig.stream.consumers()] == sorted([live, silent, me])
    assert rig.pending() == {live: kept, me: rig.ids(taken)}

    assert await reclaimer.scan({me: inbox}, itertools.cycle([me])) == 0
    assert [info.name for info in await rig.stream.consumers()] == sorted([live, me])
    assert reclaimer.claimed_total == 2
    assert (reclaimer.last_claim["from"], reclaimer.last_claim["to"], reclaimer.last_claim["entries"]) == (
        silent,
        me,
        2,
    )
