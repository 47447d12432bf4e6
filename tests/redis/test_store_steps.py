"""Log steps and failed batches against a real Redis: each store batch names
the one sent before it, and Redis takes its log steps only if that one was
applied; so a step sent before the node learnt that an earlier batch failed
never moves a peer's offset past a record of that batch (docs/PEER-PROTOCOL.md
5.3)."""

from __future__ import annotations

from typing import Any

from fakes import at_record
from harness import redis_with_store, until
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.trial import unittest

from herd.wire.peer import LogStep, Position

AT = [Position(b"E", b"%d-0" % n) for n in range(5)]


class StepsAfterAFailedBatch(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-steps-")

    def step(self, n: int) -> Any:
        return self.store.advance_offset(LogStep(b"P", AT[n - 1], AT[n]))

    def sent(self, *queued: Any) -> list[Any]:
        """Send what is queued to Redis as one batch now (what the reactor would
        do a turn later), while the batches sent before are unanswered."""
        self.store._flush_batch()
        return list(queued)

    @inlineCallbacks
    def test_a_step_sent_behind_a_batch_that_fails_is_not_taken(self) -> Any:
        yield self.store.set_peer_offset(b"P", AT[1])
        # A client key of another type: the script fails on it (WRONGTYPE).
        self.redis.call("SET", "herd:client:broken", "not a hash")
        fine = at_record("fine", 5)
        batches = [
            self.sent(self.store.store_if_newer(at_record("broken", 5), tie_break=True, source=b"P F")),
            # Sent before the failure is known: their steps are not taken.
            self.sent(self.step(2)),
            self.sent(self.store.store_if_newer(fine, tie_break=True, source=b"P F"), self.step(2)),
        ]
        results = yield DeferredList([d for batch in batches for d in batch], consumeErrors=True)
        assert [ok for ok, _ in results] == [False, True, True, True]  # only the batch that failed
        assert [result.advanced for _, result in results[1:]] == [False, False, False]
        assert results[2][1].stored  # the records are stored all the same
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"1-0"}
        # The node knows what failed now: the next batch takes steps again.
        result = yield self.step(2)
        assert result.advanced
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"2-0"}

    @inlineCallbacks
    def test_the_chain_starts_again_only_once_every_batch_sent_before_is_answered(self) -> Any:
        # Found by a review: once a batch failed, the next batch sent started
        # the chain again (took its steps) even while batches sent before the
        # failure was known were unanswered; when one of those failed too, a
        # step could pass its record.
        yield self.store.set_peer_offset(b"P", AT[1])
        for client in ("broken", "lost"):  # the script fails on either (WRONGTYPE)
            self.redis.call("SET", f"herd:client:{client}", "not a hash")
        after_failure: list[Any] = []

        def failure_known(failure: Any) -> Any:
            # The first batch's failure is known, the second batch's reply not
            # yet (it comes in a later read): a step is sent now.
            after_failure.extend(self.sent(self.step(2)))
            return failure

        first = self.store.store_if_newer(at_record("broken", 5), tie_break=True, source=b"P F")
        first.addErrback(failure_known)
        self.store._flush_batch()
        second = self.sent(self.store.store_if_newer(at_record("lost", 5), tie_break=True, source=b"P"))
        results = yield DeferredList([first, *second], consumeErrors=True)
        assert [ok for ok, _ in results] == [False, False]
        step = yield after_failure[0]
        assert not step.advanced  # sent behind the second batch, which failed too
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"1-0"}
        # Every batch sent before is answered: the next batch takes steps again.
        assert (yield self.step(2)).advanced

    @inlineCallbacks
    def test_the_chain_starts_again_on_a_new_connection(self) -> Any:
        # Found by a review: a Redis that lost its last batch mark (restarted,
        # having lost its last second with everysec) while no batch failed
        # refused every step after it, for good.
        yield self.store.set_peer_offset(b"P", AT[1])
        yield self.store.store_if_newer(at_record("one", 5), tie_break=True, source=b"P F")
        self.redis.call("SET", "herd:journal:batch", "an-older-batch")
        made = self.store.connections_made
        self.store._connection().transport.loseConnection()
        yield until(lambda: self.store.connections_made > made, "the store to reconnect")
        assert (yield self.step(2)).advanced
        assert (yield self.step(3)).advanced  # and the chain goes on
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"3-0"}

    @inlineCallbacks
    def test_steps_behind_applied_batches_are_taken(self) -> Any:
        yield self.store.set_peer_offset(b"P", AT[1])
        batches = [self.sent(self.store.store_if_newer(at_record("one", 5), tie_break=True, source=b"P F")),
                   self.sent(self.step(2)), self.sent(self.step(3))]
        assert len(self.store._sent_at) == 3
        results = yield DeferredList([d for batch in batches for d in batch])
        assert [result.advanced for _, result in results] == [False, True, True]
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"3-0"}
