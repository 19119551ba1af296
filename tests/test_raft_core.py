"""Scenarios from the Raft paper and the features the core promises, against the pure core (no I/O)."""
from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from hactl.raft.core import Config, NotLeader, ProposalRefused, Raft
from hactl.raft.types import (ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, MsgType, Role,
                              SnapshotMeta)
from tests.raft_harness import Net

import pytest


def log_terms(r: Raft) -> list[int]:
    return [e.term for e in r.log.entries]


# --------------------------------------------------------------------------- Figure 7: log states


FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIG7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("follower", sorted(FIG7_FOLLOWERS))
def test_figure7_leader_brings_any_follower_log_into_line(follower: str) -> None:
    # A term-8 leader with the paper's log and one of the paper's followers; a third node agrees with the leader
    # so that the leader can be elected (d holds term-7 entries and would otherwise refuse its vote).
    logs = {"lead": FIG7_LEADER, "peer": FIG7_LEADER, follower: FIG7_FOLLOWERS[follower]}
    terms = {"lead": 7, "peer": 7, follower: 7}
    net = Net(logs.keys(), logs=logs, terms=terms)
    lead = net.elect("lead")
    assert lead.term == 8
    lead.propose(b"x")
    net.settle()
    f = net[follower]
    assert log_terms(f) == FIG7_LEADER + [8, 8]
    assert f.log.committed == len(FIG7_LEADER) + 2


def test_figure7_backtracking_skips_whole_terms() -> None:
    # f diverges for 8 entries across terms 2 and 3: conflict-term hints need far fewer round trips than entries.
    logs = {"lead": FIG7_LEADER, "peer": FIG7_LEADER, "f": FIG7_FOLLOWERS["f"]}
    net = Net(logs.keys(), logs=logs, terms={"lead": 7, "peer": 7, "f": 7})
    mark = len(net.sent)
    net.elect("lead")
    rejects = [m for m in net.sent[mark:] if m.type == MsgType.APPEND_RESP and m.reject and m.frm == "f"]
    assert 1 <= len(rejects) <= 3, rejects
    assert log_terms(net["f"])[:10] == FIG7_LEADER


# --------------------------------------------------------------------------- Figure 8: commit rule


def test_figure8_previous_term_entry_is_not_committed_by_counting_replicas() -> None:
    # S1 leads term 4 holding an index-2 entry from term 2 that only S2 has; S3..S5 have index 1 only.
    logs = {"s1": [1, 2], "s2": [1, 2], "s3": [1], "s4": [1], "s5": [1]}
    terms = {"s1": 3, "s2": 3, "s3": 3, "s4": 3, "s5": 3}
    net = Net(logs.keys(), logs=logs, terms=terms)
    # Deliver nothing of S1's appends except to S3, and keep S1 from persisting its own term-4 entry: the term-2
    # entry then sits on a majority (s1, s2, s3) but no term-4 entry does.
    net.drop = lambda m: m.frm == "s1" and m.to in ("s4", "s5")
    s1 = net["s1"]
    s1.election_elapsed = s1.randomized_timeout
    s1.tick()
    # Run by hand so S1's own Ready is never advanced past index 2.
    for _ in range(50):
        for i in ("s2", "s3", "s4", "s5"):
            r = net[i]
            if r.has_ready():
                rd = r.ready()
                net.queue.extend(rd.early_messages + rd.messages)
                r.advance(rd)
        if s1.has_ready():
            rd = s1.ready()
            net.queue.extend(rd.early_messages + rd.messages)
            # persist only what is at or below index 2: the term-4 entry stays unstable
            rd.entries = [e for e in rd.entries if e.index <= 2]
            s1.advance(rd)
        q, net.queue = net.queue, []
        for m in q:
            if not net.drop(m):
                net[m.to].step(m)
    assert s1.role == Role.LEADER and s1.term == 4
    assert s1.prs["s3"].match >= 2 and s1.prs["s2"].match >= 2
    assert s1.log.committed == 0, "a term-2 entry was committed by counting replicas (Figure 8)"
    # Once its own term-4 entry is durable and replicated, everything up to it commits.
    rd = s1.ready()
    net.queue.extend(rd.early_messages + rd.messages)
    s1.advance(rd)
    net.heal()
    net.settle()
    assert s1.log.committed == 3 and s1.log.term(3) == 4


def test_leader_counts_itself_only_for_persisted_entries() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    base = lead.log.committed
    idx = lead.propose(b"x")
    rd = lead.ready()  # the leader does not persist (no advance) ...
    net.drop = lambda m: m.to == "c"
    for m in rd.early_messages + rd.messages:
        net[m.to].step(m) if not net.drop(m) else None
    for i in ("b",):
        r = net[i]
        rd2 = r.ready()
        r.advance(rd2)
        for m in rd2.messages:
            lead.step(m)
    assert lead.prs["b"].match == idx
    assert lead.log.committed == base, "leader counted an entry it had not persisted"
    lead.advance(rd)  # ... now it has: b + a is a majority
    assert lead.log.committed == idx


# --------------------------------------------------------------------------- elections


def test_one_vote_per_term_and_up_to_date_check() -> None:
    r = Raft(Config("a", pre_vote=False, check_quorum=False), random.Random(1), hard_state=HardState(term=1),
             conf=ConfState(("a", "b", "c")), entries=[Entry(1, 1), Entry(2, 1)])
    r.step(Message(MsgType.VOTE, "b", "a", 2, log_term=1, index=2))
    r.step(Message(MsgType.VOTE, "c", "a", 2, log_term=1, index=2))
    resp = {m.to: m.reject for m in r.ready().messages}
    assert resp == {"b": False, "c": True}
    r.step(Message(MsgType.VOTE, "c", "a", 3, log_term=1, index=1))  # shorter log at a later term
    assert [m.reject for m in r.ready().messages] == [True]


def test_prevote_keeps_a_flapping_node_from_raising_terms() -> None:
    net = Net(["a", "b", "c"], pre_vote=True, check_quorum=True)
    lead = net.elect("a")
    term = lead.term
    for _ in range(5):  # c drops off, times out repeatedly, comes back
        net.isolate("c")
        net.tick(40, only=["c"])
        assert net["c"].term == term, "pre-vote should keep an isolated node's term"
        net.heal()
        net.tick(3)
    assert lead.role == Role.LEADER and lead.term == term
    assert net["c"].leader == "a"


def test_without_prevote_leases_make_followers_ignore_a_rejoining_candidate() -> None:
    # Without pre-vote an isolated node inflates its term; check-quorum leases make the others ignore its vote
    # requests while their leader is alive, so it cannot win with a stale log.
    net = Net(["a", "b", "c"], pre_vote=False, check_quorum=True)
    lead = net.elect("a")
    term = lead.term
    lead.propose(b"only a and b have this")
    net.isolate("c")
    net.settle()
    net.tick(40, only=["c"])
    assert net["c"].term > term
    net.heal()
    net.campaign("c")
    assert net["b"].dropped["vote_in_lease"] == 1 and net["b"].term == term and net["b"].leader == "a"
    assert net["c"].role == Role.CANDIDATE
    net.tick(30)  # the stale-term replies eventually make everyone move to c's term and elect an up-to-date node
    assert len(net.leaders()) == 1 and net.leader().id in ("a", "b")
    assert any(e.data == b"only a and b have this" for e in net["c"].log.entries)


def test_check_quorum_leader_steps_down_when_cut_off() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    net.isolate("a")
    net.tick(lead.cfg.election_tick + 1, only=["a"])
    assert lead.role == Role.FOLLOWER
    with pytest.raises(NotLeader):
        lead.propose(b"x")


# --------------------------------------------------------------------------- leadership transfer


def test_transfer_to_a_lagging_node_waits_until_it_caught_up() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    net.isolate("c")
    for i in range(10):
        lead.propose(b"%d" % i)
    net.settle()
    assert lead.prs["c"].match < lead.log.last_index()
    mark = len(net.sent)
    lead.transfer_leadership("c")
    net.settle()
    assert net.count(MsgType.TIMEOUT_NOW, mark) == 0, "TimeoutNow sent to a lagging node"
    with pytest.raises(ProposalRefused):
        lead.propose(b"during transfer")
    net.heal()
    net.tick(1)
    assert net["c"].role == Role.LEADER and net["c"].log.last_index() >= 11
    assert lead.role == Role.FOLLOWER and lead.leader == "c"


def test_transfer_to_a_learner_is_refused() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    net.add(Raft(Config("d"), random.Random(9)))
    lead.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
    net.settle()
    assert "d" in lead.conf.learners
    with pytest.raises(ProposalRefused):
        lead.transfer_leadership("d")


def test_transfer_times_out_and_leader_keeps_leading() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    net.isolate("b")
    lead.propose(b"x")
    net.settle()
    lead.transfer_leadership("b")
    net.tick(lead.cfg.election_tick + 1, only=["a", "c"])
    assert lead.role == Role.LEADER and lead.transferee is None
    lead.propose(b"y")


# --------------------------------------------------------------------------- membership


def add_node(net: Net, nid: str) -> Raft:
    return net.add(Raft(Config(nid), random.Random(len(net.ids))))


def test_learner_never_counts_toward_quorum() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    for nid in ("d", "e"):
        add_node(net, nid)
        lead.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, nid))
        net.settle()
    assert lead.conf.learners == ("d", "e")
    net.isolate("b", "c")  # a + two learners ack: 3 of 5 members, but 1 of 3 voters
    before = lead.log.committed
    idx = lead.propose(b"x")
    net.settle()
    assert lead.prs["d"].match == idx and lead.prs["e"].match == idx
    assert lead.log.committed == before
    net.heal()
    net.tick(1)
    assert lead.log.committed >= idx


def test_single_server_changes_one_at_a_time_and_promotion_needs_catch_up() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    d = add_node(net, "d")
    net.drop = lambda m: m.to == "d"
    lead.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
    with pytest.raises(ProposalRefused):  # the first change is not applied yet
        lead.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "b"))
    net.settle()
    for i in range(lead.cfg.promote_max_lag + 5):
        lead.propose(b"%d" % i)
    net.settle()
    with pytest.raises(ProposalRefused, match="not caught up"):
        lead.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, "d"))
    net.heal()
    net.tick(2)
    lead.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, "d"))
    net.settle()
    assert lead.conf.voters == ("a", "b", "c", "d") and d.conf == lead.conf
    net.isolate("b")  # b never learns of its removal, so it keeps campaigning
    lead.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "b"))
    net.settle()
    assert lead.conf.voters == ("a", "c", "d") and "b" in net["b"].conf.voters
    net.heal()
    term = lead.term
    net.tick(40, only=["b"])  # a removed node cannot disrupt: the members drop it as an unknown sender
    net.tick(3)
    assert lead.role == Role.LEADER and lead.term == term
    assert net["c"].dropped["unknown_sender"] >= 1 and net["d"].dropped["unknown_sender"] >= 1


def test_removing_the_leader_hands_over() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    lead.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "a"))
    net.settle()
    # a handed over (TimeoutNow) and a voter of the new configuration leads a new term already...
    assert len([i for i in ("b", "c") if net[i].role == Role.LEADER]) == 1
    assert all(net[i].term == lead.term + 1 for i in ("b", "c"))
    # ...which a, no longer a member, learns from the answer to its next heartbeat.
    net.tick(1, only=["a"])
    assert lead.role == Role.FOLLOWER
    net.tick(30, only=["b", "c"])
    assert len([i for i in ("b", "c") if net[i].role == Role.LEADER]) == 1


def test_a_removed_leader_tells_the_remaining_voters_before_it_steps_down() -> None:
    # Thesis 4.2.2: a leader that is not part of C_new steps down once C_new is committed. Here a membership takes
    # effect when it is applied, so a voter takes C_new only once it hears that the entry committed, and only a
    # leader says so. c holds the entry that removes a but never hears from a that it committed. Were a to go quiet
    # at once, c would stay on {a, b, c}, where a's vote counts and a never campaigns again; without pre-vote its
    # campaigns (which b refuses whenever b's log is longer) then keep knocking b out of its own (simulator seed
    # 525). Instead a hands leadership to a remaining voter (thesis 3.10, TimeoutNow), whose term-start entry
    # carries the commit to every voter: no election timeout has to pass.
    net = Net(["a", "b", "c"], pre_vote=False)
    lead = net.elect("a")
    term = lead.term
    index = lead.log.last_index() + 1
    net.drop = lambda m: m.frm == "a" and m.to == "c" and m.commit >= index
    assert lead.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "a")) == index
    net.settle()  # no tick anywhere
    assert lead.role == Role.FOLLOWER and lead.conf.voters == ("b", "c")
    new = net.leader()
    assert new.id in ("b", "c") and new.term == term + 1
    for i in ("b", "c"):
        assert net[i].conf.voters == ("b", "c"), f"{i} still uses {net[i].conf.voters}"
        assert net[i].log.committed == new.log.last_index()
    new.propose(b"after")
    net.settle()
    assert all(net[i].log.committed == new.log.last_index() for i in ("b", "c"))


def test_a_removed_leader_whose_hand_off_fails_steps_down_after_an_election_timeout() -> None:
    # While it hands over, the removed leader takes no proposals and does not count itself in any majority; if no
    # voter takes over within an election timeout, it steps down and the voters of C_new elect one of their own.
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    net.drop = lambda m: m.type == MsgType.TIMEOUT_NOW
    lead.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "a"))
    net.settle()
    assert lead.role == Role.LEADER and lead.transferee in ("b", "c") and lead.conf.voters == ("b", "c")
    assert all(net[i].conf.voters == ("b", "c") for i in ("b", "c"))
    with pytest.raises(ProposalRefused):
        lead.propose(b"x")
    net.tick(lead.cfg.election_tick - 1, only=["a"])
    assert lead.role == Role.LEADER
    net.tick(1, only=["a"])
    assert lead.role == Role.FOLLOWER and lead.leader is None
    net.tick(4 * lead.cfg.election_tick, only=["b", "c"])
    assert len([i for i in ("b", "c") if net[i].role == Role.LEADER]) == 1


# --------------------------------------------------------------------------- ReadIndex


def test_read_index_many_reads_share_one_heartbeat_round() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    lead.propose(b"x")
    net.settle()
    mark = len(net.sent)
    for i in range(50):
        lead.read_index(b"r%d" % i)
    net.settle()
    states = net.reads["a"]
    assert sorted(s.context for s in states) == sorted(b"r%d" % i for i in range(50))
    assert {s.index for s in states} == {lead.log.committed}
    assert net.count(MsgType.HEARTBEAT, mark) == 2  # one round to the two followers


def test_read_index_on_a_follower_and_not_before_the_term_commits() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    lead.propose(b"x")
    net.settle()
    b = net["b"]
    b.read_index(b"q")
    net.settle()
    assert [(s.index, s.context) for s in net.reads["b"]] == [(lead.log.committed, b"q")]
    # A new leader holds reads until an entry of its own term commits.
    net.isolate("a")
    net.tick(lead.cfg.election_tick, only=["b", "c"])  # leases run out
    net.drop = lambda m: m.frm == "a" or m.to == "a" or m.type == MsgType.APPEND_RESP
    net.campaign("b")
    assert b.role == Role.LEADER
    b.read_index(b"early")
    net.settle()
    assert net.reads["b"][1:] == [], "a read was served before the new leader committed in its term"
    net.drop = lambda m: m.frm == "a" or m.to == "a"
    net.tick(1, only=["b", "c"])
    assert [s.context for s in net.reads["b"][1:]] == [b"early"]
    assert net.reads["b"][1].index >= b.log.committed - 1 and b.log.term(b.log.committed) == b.term


def test_read_index_needs_a_quorum() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    net.isolate("a")
    lead.read_index(b"lost")
    net.settle()
    assert net.reads["a"] == []
    with pytest.raises(NotLeader):
        Net(["a", "b", "c"])["b"].read_index(b"no leader yet")


# --------------------------------------------------------------------------- snapshots, windows, bad input


def test_follower_behind_compaction_gets_snapshot() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    net.isolate("c")
    for i in range(30):
        lead.propose(b"%d" % i)
    net.settle()
    meta = SnapshotMeta(lead.applied, lead.log.term(lead.applied), lead.conf)
    lead.set_snapshot(meta)
    lead.compact(meta.index)
    net.heal()
    mark = len(net.sent)
    net.tick(1)
    snaps = [m for m in net.sent[mark:] if m.type == MsgType.SNAPSHOT]
    assert snaps and snaps[0].snapshot == meta
    c = net["c"]
    assert c.snapshot == meta and c.log.offset == meta.index and c.applied >= meta.index
    lead.propose(b"after")
    net.settle()
    assert c.log.last_index() == lead.log.last_index()


def test_inflight_window_bounds_unacknowledged_appends() -> None:
    net = Net(["a", "b", "c"], max_inflight=2, max_msg_entries=1)
    lead = net.elect("a")
    net.drop = lambda m: m.type == MsgType.APPEND_RESP  # no acks come back
    mark = len(net.sent)
    for i in range(10):
        lead.propose(b"%d" % i)
    net.settle()
    per_peer = {p: sum(1 for m in net.sent[mark:] if m.type == MsgType.APPEND and m.to == p and m.entries)
                for p in ("b", "c")}
    assert per_peer == {"b": 2, "c": 2}


def test_batching_caps_entries_and_bytes_per_message() -> None:
    net = Net(["a", "b", "c"], max_msg_entries=8, max_msg_bytes=1000)
    lead = net.elect("a")
    mark = len(net.sent)
    for i in range(40):
        lead.propose(bytes(100))
    net.settle()
    appends = [m for m in net.sent[mark:] if m.type == MsgType.APPEND and m.entries]
    assert appends and all(len(m.entries) <= 8 for m in appends)
    assert all(sum(e.size() for e in m.entries) <= 1000 for m in appends)
    assert net["b"].log.last_index() == lead.log.last_index()


def test_unknown_stale_and_malformed_messages_are_dropped_and_counted() -> None:
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    b = net["b"]
    b.step(Message(MsgType.VOTE, "zz", "b", lead.term + 5))  # a removed (or unknown) node campaigning
    b.step(Message(MsgType.APPEND, "a", "someone-else", lead.term))
    b.step(Message(MsgType.SNAPSHOT, "a", "b", lead.term))  # snapshot type without a snapshot
    b.step(Message(MsgType.APPEND, "a", "b", lead.term, index=5, entries=(Entry(9, 1),)))
    b.step(Message(MsgType.VOTE_RESP, "c", "b", 0))
    b.step("garbage")  # type: ignore[arg-type]
    assert b.dropped["unknown_sender"] == 1 and b.dropped["wrong_recipient"] == 1
    assert b.dropped["malformed"] == 3 and b.dropped["stale_term"] == 1
    assert b.leader == "a" and b.term == lead.term


entries_st = st.lists(st.builds(Entry, st.integers(1, 30), st.integers(1, 9)), max_size=4).map(tuple)
messages_st = st.builds(
    Message, st.sampled_from(list(MsgType)), st.sampled_from(["a", "b", "c", "x"]), st.sampled_from(["b", "q"]),
    st.integers(0, 12), log_term=st.integers(0, 12), index=st.integers(0, 40), entries=entries_st,
    commit=st.integers(0, 60), reject=st.booleans(), reject_hint=st.integers(0, 40),
    snapshot=st.none() | st.builds(SnapshotMeta, st.integers(0, 50), st.integers(0, 12),
                                   st.just(ConfState(("a", "b", "c")))),
    context=st.binary(max_size=9))


@settings(max_examples=300, deadline=None)
@given(st.lists(messages_st, max_size=30))
def test_step_never_raises_on_arbitrary_messages(msgs: list[Message]) -> None:
    """Step no longer swallows exceptions (a bug must stop the node), so whatever a peer can send must be
    validated or handled: on a follower and on the leader alike."""
    for who in ("b", "a"):
        net = Net(["a", "b", "c"])
        net.elect("a")
        node = net[who]
        for m in msgs:
            m = dataclasses.replace(m, to=who) if m.to in ("a", "b") else m
            node.step(m)  # must not raise
            if node.has_ready():
                node.advance(node.ready())
        assert node.log.committed <= node.log.last_index()


def test_snapshot_installed_while_a_ready_is_persisted_supersedes_its_membership_changes() -> None:
    # Found by the simulator (churn seed 49): committed conf changes handed out in a Ready, then a snapshot that
    # already covers them arrives before that Ready is advanced. Advancing must not re-apply them on top of it.
    from hactl.raft.confchange import bootstrap_state, encode_conf_change
    hs, boot = bootstrap_state(["n1", "n2", "n3"])
    r = Raft(Config("n2"), random.Random(3), hard_state=hs, entries=boot)
    r.advance(r.ready())
    assert r.conf.voters == ("n1", "n2", "n3")
    add = Entry(7, 2, EntryType.CONF_CHANGE, encode_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "n4")))
    rm = Entry(8, 2, EntryType.CONF_CHANGE, encode_conf_change(ConfChange(ConfChangeType.REMOVE, "n4")))
    r.step(Message(MsgType.APPEND, "n1", "n2", 2, log_term=1, index=6, entries=(add, rm), commit=7))
    rd1 = r.ready()
    assert [e.index for e in rd1.committed] == [7]
    r.step(Message(MsgType.SNAPSHOT, "n1", "n2", 2, snapshot=SnapshotMeta(10, 2, ConfState(("n1", "n2", "n3")))))
    r.advance(rd1)
    r.advance(r.ready())
    assert r.conf == ConfState(("n1", "n2", "n3")) and r.applied == 10


class _BuggyFollower(Raft):
    """A core with a bug in its follower path (what a real bug would look like from the outside)."""

    def _handle_append(self, m: Message) -> None:
        raise TypeError("bug in append handling")


def test_an_internal_bug_propagates_from_step_instead_of_being_counted_as_a_drop() -> None:
    r = _BuggyFollower(Config("b"), random.Random(1), conf=ConfState(("a", "b", "c")))
    msg = Message(MsgType.APPEND, "a", "b", 1, log_term=0, index=0, commit=0)
    with pytest.raises(TypeError, match="bug in append handling"):
        r.step(msg)
    assert not any(k.startswith("error:") for k in r.dropped)
    # Bad input from a peer is still dropped and counted, never raised.
    r2 = Raft(Config("b"), random.Random(1), conf=ConfState(("a", "b", "c")))
    r2.step(Message(MsgType.APPEND, "a", "x", 1))
    assert r2.dropped["wrong_recipient"] == 1


def test_a_new_term_drops_queued_acknowledgements_of_the_old_one() -> None:
    """A follower acknowledges entries in term 2, then (before its next Ready) a term-3 leader truncates them. The
    old acknowledgement must not leave after a write that no longer holds those entries (found by the simulator)."""
    r = Raft(Config("b"), random.Random(1), conf=ConfState(("a", "b", "c")), hard_state=HardState(2, None, 0),
             entries=[Entry(1, 1, EntryType.NORMAL, b"x")])
    r.step(Message(MsgType.APPEND, "a", "b", 2, log_term=1, index=1, commit=1,
                   entries=(Entry(2, 2, EntryType.NORMAL, b"old2"), Entry(3, 2, EntryType.NORMAL, b"old3"))))
    r.step(Message(MsgType.APPEND, "c", "b", 3, log_term=1, index=1, commit=1,
                   entries=(Entry(2, 3, EntryType.NORMAL, b"new2"),)))
    rd = r.ready()
    assert [e.term for e in rd.entries] == [3] and rd.entries[0].index == 2
    acks = [(m.term, m.index) for m in rd.messages + rd.early_messages if m.type == MsgType.APPEND_RESP]
    assert acks == [(3, 2)], acks  # no (2, 3): entries 2..3 of term 2 are never written


def test_followers_that_lost_the_leaders_connection_elect_within_a_few_ticks() -> None:
    """The leader died (both followers saw its connection close): a new leader within 4 ticks, not the 10-20 of
    the election timeout."""
    net = Net(["a", "b", "c"], pre_vote=True, check_quorum=True, election_tick=10)
    lead = net.elect("a")
    term = lead.term
    net.isolate("a")
    net["b"].leader_lost()
    net["c"].leader_lost()
    net.tick(4, only=["b", "c"])
    assert len([i for i in ("b", "c") if net[i].role == Role.LEADER]) == 1
    assert max(net["b"].term, net["c"].term) == term + 1


def test_a_lost_connection_to_a_live_leader_disturbs_nothing() -> None:
    """Only b lost its connection (a blip): its pre-votes find c still in the leader's lease, so a stays leader
    and no term moves."""
    net = Net(["a", "b", "c"], pre_vote=True, check_quorum=True, election_tick=10)
    lead = net.elect("a")
    term = lead.term
    net["b"].leader_lost()
    net.tick(4, only=["b"])
    assert net["c"].dropped["vote_in_lease"] >= 1
    net.tick(3)
    assert lead.role == Role.LEADER and all(net[i].term == term for i in "abc") and net["b"].leader == "a"


def test_an_update_changes_only_a_members_context() -> None:
    """UPDATE (a member's new address) leaves voters and learners as they are, commits like any membership change
    (one at a time), and is refused for a node that is not a member."""
    net = Net(["a", "b", "c"])
    lead = net.elect("a")
    with pytest.raises(ProposalRefused, match="not a member"):
        lead.propose_conf_change(ConfChange(ConfChangeType.UPDATE, "z", b"10.0.0.9:7000"))
    index = lead.propose_conf_change(ConfChange(ConfChangeType.UPDATE, "b", b"10.0.0.2:7000"))
    with pytest.raises(ProposalRefused, match="pending"):
        lead.propose_conf_change(ConfChange(ConfChangeType.UPDATE, "c", b"10.0.0.3:7000"))
    net.settle()
    assert all(net[i].log.committed >= index for i in ("a", "b", "c"))
    assert all(net[i].conf == ConfState(("a", "b", "c"), ()) for i in ("a", "b", "c"))
    lead.propose_conf_change(ConfChange(ConfChangeType.UPDATE, "c", b"10.0.0.3:7000"))  # no longer pending
