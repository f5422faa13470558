#!/usr/bin/env python3
"""A Ballast provider in Python: the provider contract (ballast.provider.v1) served with grpcio.

It is the second, independent implementation of the contract (the first is the Rust reference
provider, provider-sim/) and the worked example of docs/providers.md. It keeps the contract as a
real provider must: every mutating call is idempotent by (shard, key), fenced by the shard's
restart epoch and by the grants it acts under, and made durable before it is answered. Its
"cloud" is the state file itself: machines are IDLE the moment they exist.

Ownership, in short: a domain grant is the right to CREATE in the domain (and a create counts
against the quota's slice table); a machine at work belongs to the shard serving its cluster and
moves with the CLUSTER, in place, when a newer cluster grant is presented; an idle machine
belongs to whoever holds it. Nothing moves when a domain changes hands. Each grant kind has a
mark (the newest grant accepted and, for domains and clusters, the shard it went to); a grant
older than the mark, or equal to it but presented by another shard, is refused `stale-grant`.

The layout, top to bottom:
  load_stubs  generates the gRPC code from the contract's .proto at start;
  Refusal     a refusal and its encoding (google.rpc.Status + google.rpc.ErrorInfo);
  Book        the rules, over plain data, with no I/O;
  Store       the data dir: the whole book as one JSON file, replaced atomically;
  Provider    the gRPC service: one lock around the book, persist, answer;
  main        flags, bind, print `listening on HOST:PORT`, serve until SIGTERM.
"""

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import unicodedata
from concurrent import futures

import grpc
from google.protobuf import any_pb2, json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

CONTRACT = "ballast.provider.v1"
PROTO = "ballast/provider/v1/provider.proto"
# In a checkout, the contract lives three levels up; --proto-dir points elsewhere.
DEFAULT_PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                 "protocol", "proto")

pb = None  # provider_pb2, set by load_stubs()


def load_stubs(proto_dir):
    """Generates provider_pb2 / provider_pb2_grpc from the contract and imports them.

    They are made afresh at every start (about a tenth of a second) in a temporary directory
    that is removed once they are imported: nothing generated is checked in, and the code can
    never be older than the .proto it serves.
    """
    from grpc_tools import protoc  # imported here: only start-up needs the compiler

    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")  # google/protobuf/*
    out = tempfile.mkdtemp(prefix="ballast-provider-stubs-")
    try:
        argv = ["protoc", f"-I{proto_dir}", f"-I{well_known}",
                f"--python_out={out}", f"--grpc_python_out={out}", PROTO]
        if protoc.main(argv) != 0:
            sys.exit(f"provider: cannot compile {os.path.join(proto_dir, PROTO)}")
        sys.path.insert(0, out)
        try:
            module = PROTO[:-len(".proto")].replace("/", ".")
            return (importlib.import_module(module + "_pb2"),
                    importlib.import_module(module + "_pb2_grpc"))
        finally:
            sys.path.remove(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---- refusals -------------------------------------------------------------------------------

# Every reason the contract names, with the gRPC code it travels under.
CODES = {
    "stale-grant": grpc.StatusCode.FAILED_PRECONDITION,
    "stale-epoch": grpc.StatusCode.FAILED_PRECONDITION,
    "over-slice": grpc.StatusCode.FAILED_PRECONDITION,
    "not-owner": grpc.StatusCode.FAILED_PRECONDITION,
    "invalid-state": grpc.StatusCode.FAILED_PRECONDITION,
    "idempotency-conflict": grpc.StatusCode.ALREADY_EXISTS,
    "already-exists": grpc.StatusCode.ALREADY_EXISTS,
    "insufficient-capacity": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "not-found": grpc.StatusCode.NOT_FOUND,
    "invalid-argument": grpc.StatusCode.INVALID_ARGUMENT,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
}


class Refusal(Exception):
    """A call refused: the contract's reason, words for people, facts for programs."""

    def __init__(self, reason, message, **metadata):
        super().__init__(message)
        self.reason, self.message, self.metadata = reason, message, metadata

    def status(self):
        """The refusal as gRPC's richer error model: a google.rpc.Status whose details hold a
        google.rpc.ErrorInfo (domain = the contract) packed in an Any. grpcio-status puts it in
        the `grpc-status-details-bin` trailer, where every gRPC library's helpers look."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=CONTRACT,
                                           metadata=self.metadata)
        detail = any_pb2.Any()
        detail.Pack(info)  # type URL type.googleapis.com/google.rpc.ErrorInfo
        code = CODES[self.reason]
        status = status_pb2.Status(code=code.value[0], message=self.message, details=[detail])
        # A grpc.Status: the code and message as usual, the google.rpc.Status serialized in the
        # trailer; the grpc-status header carries the same code, which callers also check.
        return rpc_status.to_status(status)


def invalid(message):
    return Refusal("invalid-argument", message)


def check_id(what, value):
    """Ids and names are 1-253 bytes with no whitespace or control characters."""
    if not value or len(value.encode()) > 253 or any(
            c.isspace() or unicodedata.category(c) == "Cc" for c in value):
        raise invalid(f"{what} {value!r} must be 1-253 characters without spaces "
                      "or control characters")


# ---- grants ---------------------------------------------------------------------------------
# A grant is held as a (restore_epoch, revision) tuple, so Python's tuple order is the
# contract's order; a missing grant is None and ranks below every real one.

def grant_of(message, field="grant"):
    if not message.HasField(field):
        return None
    grant = getattr(message, field)
    return (grant.restore_epoch, grant.revision)


def rank(grant):
    return (-1, -1) if grant is None else grant


def show(grant):
    return "none" if grant is None else f"{grant[0]}/{grant[1]}"


def intent(request):
    """The digest an idempotency key is bound to: the call and its fields without the token,
    which every attempt renews (a new sequence, perhaps a renewed grant or epoch). The call's
    name is part of it: a release and a delete of one machine encode to the same bytes."""
    bare = type(request)()
    bare.CopyFrom(request)
    bare.ClearField("token")
    name = request.DESCRIPTOR.full_name.encode()
    return hashlib.sha256(name + b"\0" + bare.SerializeToString(deterministic=True)).hexdigest()


def snapshot(machine):
    """A copy that later changes to the book cannot reach (answers are remembered as given)."""
    copy = pb.Machine()
    copy.CopyFrom(machine)
    return copy


def state_name(machine):
    return pb.MachineState.Name(machine.state)


def live(machine):
    """Whether a machine counts against quota and capacity."""
    return machine.state not in (pb.DELETED, pb.FAILED)


# ---- the book -------------------------------------------------------------------------------

@dataclasses.dataclass
class Catalog:
    """What the provider offers; fixed for the life of the process."""
    name: str
    quota_provider: str
    regions: list
    zones: list
    domains: set          # empty: any domain
    shapes: dict          # name -> (Resources, price per hour)
    capacity_types: list  # the first is the default
    capacity: object      # most live machines at once (None: no limit)
    idempotency_keys: int  # how many answers are remembered


class Book:
    """The provider's state and rules. Each mutating call either answers a list of machines or
    raises a Refusal; a refusal always comes before the change it refuses. Not thread-safe:
    the service calls it under one lock."""

    def __init__(self, catalog):
        self.catalog = catalog
        self.machines = {}  # id -> Machine
        self.domains = {}   # domain -> (grant, shard): the newest domain grant accepted
        self.clusters = {}  # cluster -> (grant, shard): the newest cluster grant accepted
        self.quotas = {}    # (quota_provider, region) -> the newest slice-table grant accepted
        self.epochs = {}    # shard -> its newest restart epoch seen
        self.answers = {}   # (shard, key) -> (intent, [Machine]), oldest first (dicts keep order)
        self.version = 0    # the last machine version handed out

    # -- reads --

    def get(self, machine_id):
        if machine_id not in self.machines:
            raise Refusal("not-found", f"no machine {machine_id}", machine=machine_id)
        return self.machines[machine_id]

    def list(self, domain, owner, cluster, cursor, limit):
        """A page of machines in id order after `cursor` (the last id of the previous page), and
        the next cursor ("" after the last page); each filter ("" for any) narrows the others.
        Ids never change, so a cursor stays valid and a machine created during paging is listed
        at most once."""
        page = []
        for machine_id in sorted(i for i in self.machines if i > cursor):
            machine = self.machines[machine_id]
            if (domain in ("", machine.domain) and owner in ("", machine.owner_shard)
                    and cluster in ("", machine.cluster)):
                page.append(machine)
                if len(page) > limit:  # one more than asked: there is a next page
                    return page[:limit], page[limit - 1].id
        return page, ""

    # -- mutating calls --

    def create(self, request):
        return self._call(request, lambda token: [self._create(token, request)])

    def configure(self, request):
        return self._call(request, lambda token: [self._configure(token, request)])

    def release(self, request):
        return self._call(request, lambda token: [self._release(token, request)])

    def delete(self, request):
        return self._call(request, lambda token: [self._delete(token, request)])

    def claim_domain(self, request):
        return self._call(request, self._claim_domain)

    def adopt_cluster(self, request):
        return self._call(request, self._adopt_cluster)

    def _call(self, request, act):
        """The frame of every mutating call: a well-formed key and token; a repeat of a
        remembered key answers what it answered; else the epoch fence, then the call."""
        key = request.idempotency_key
        if not key or len(key.encode()) > 200:
            raise invalid("idempotency_key must be 1-200 characters")
        if not request.HasField("token"):
            raise invalid("a fencing token is required")
        token = request.token
        check_id("shard_id", token.shard_id)
        stored, digest = (token.shard_id, key), intent(request)
        if stored in self.answers:
            remembered, machines = self.answers[stored]
            if remembered != digest:
                raise Refusal("idempotency-conflict", f"idempotency key {key!r} of shard "
                              f"{token.shard_id} was used for another request", key=key)
            # A repeat acts on nothing, so only whether the caller may still act matters: a
            # fenced shard must never see success. The slice table it was counted under is
            # history. Verdicts only: a replay records no grant and hands nothing over.
            self._epoch_verdict(token)
            if token.HasField("domain"):
                self._domain_verdict(token)
            if token.HasField("cluster"):
                self._cluster_verdict(token)
            return machines
        # What a call changes before a later refusal (the shard's newer epoch, a cluster handed
        # over under a newer grant) is valid on its own and stays.
        self._fence_epoch(token)
        machines = act(token)
        # Only successes are remembered: a refusal changed nothing the caller asked for, so its
        # retry is judged afresh. The oldest answers are forgotten past --idempotency-keys.
        self.answers[stored] = (digest, machines)
        while len(self.answers) > self.catalog.idempotency_keys:
            del self.answers[next(iter(self.answers))]
        return machines

    def _create(self, token, request):
        check_id("machine_id", request.machine_id)
        self._serves(request.domain)
        if request.shape not in self.catalog.shapes:
            raise invalid(f"unknown shape {request.shape!r}; Describe lists the shapes")
        capacity_type = request.capacity_type or self.catalog.capacity_types[0]
        if capacity_type not in self.catalog.capacity_types:
            raise invalid(f"unknown capacity type {capacity_type!r}")
        domain, grant = self._domain_grant(token)
        if domain != request.domain:
            raise invalid(f"the token's grant is for domain {domain}, "
                          f"the machine is for {request.domain}")
        if not token.HasField("quota") or not token.quota.HasField("grant"):
            raise invalid("a create needs a quota grant")
        quota = token.quota
        self._counts_against(quota)
        if request.machine_id in self.machines:
            raise Refusal("already-exists", f"machine id {request.machine_id} is taken")
        # Judge the domain and quota fences and the slice before accepting any of them: a
        # create refused over-slice must not have recorded a grant on its way.
        self._domain_verdict(token)
        self._quota_verdict(quota)
        # What the shard holds of this quota: a newer domain grant takes over no machine, so
        # only the live machines it owns count.
        held = sum(1 for m in self.machines.values()
                   if m.owner_shard == token.shard_id
                   and (m.quota_provider, m.region) == (quota.quota_provider, quota.region)
                   and live(m))
        if held + 1 > quota.slice:
            raise Refusal("over-slice", f"shard {token.shard_id} holds {held} machines of quota "
                          f"{quota.quota_provider}/{quota.region}; its slice is {quota.slice}",
                          held=str(held), slice=str(quota.slice))
        capacity = self.catalog.capacity
        if capacity is not None and sum(1 for m in self.machines.values() if live(m)) >= capacity:
            raise Refusal("insufficient-capacity", f"all {capacity} machines are in use")
        self._fence_domain(token)
        self._fence_quota(quota)
        resources, _price = self.catalog.shapes[request.shape]
        self.machines[request.machine_id] = pb.Machine(
            id=request.machine_id, domain=domain, shape=request.shape, resources=resources,
            capacity_type=capacity_type, state=pb.IDLE, owner_shard=token.shard_id,
            owner_grant=pb.Grant(restore_epoch=grant[0], revision=grant[1]),
            quota_provider=quota.quota_provider, region=quota.region)
        return self._touch(request.machine_id)

    def _configure(self, token, request):
        check_id("machine_id", request.machine_id)
        check_id("cluster", request.cluster)
        cluster, _ = self._cluster_grant(token)
        if cluster != request.cluster:
            raise invalid(f"the token's grant is for cluster {cluster}, "
                          f"the machine is to be configured for {request.cluster}")
        machine = self.get(request.machine_id)
        self._fence_cluster(token)  # may hand the cluster, and its machines, to the caller
        self._check_owner(token, machine)  # the token's domain grant, if any, is not looked at
        if machine.state == pb.IDLE:
            machine.state, machine.cluster = pb.CONFIGURED, request.cluster
        elif not (machine.state == pb.CONFIGURED and machine.cluster == request.cluster):
            raise Refusal("invalid-state", f"machine {machine.id} is {state_name(machine)} "
                          f"for cluster {machine.cluster!r}; release it first")
        return self._touch(machine.id)

    def _release(self, token, request):
        machine = self._held_machine(token, request.machine_id)
        if machine.state == pb.CONFIGURED:
            machine.state, machine.cluster = pb.IDLE, ""
        elif machine.state != pb.IDLE:
            raise Refusal("invalid-state", f"machine {machine.id} is {state_name(machine)}")
        return self._touch(machine.id)

    def _delete(self, token, request):
        machine = self._held_machine(token, request.machine_id)
        if live(machine):  # deleting a deleted machine answers it as it is
            machine.state, machine.cluster = pb.DELETED, ""
        return self._touch(machine.id)

    def _claim_domain(self, token):
        """The caller claims the token's domain (and the quota's slice table, if the token
        carries one): creates under older grants are refused from then on. No machine moves."""
        domain, _ = self._domain_grant(token)
        self._serves(domain)
        if token.HasField("quota"):
            self._counts_against(token.quota)
            self._quota_verdict(token.quota)
        self._domain_verdict(token)
        # Both verdicts passed: record whichever grants are newer.
        if token.HasField("quota"):
            self._fence_quota(token.quota)
        self._fence_domain(token)
        return []

    def _adopt_cluster(self, token):
        """The caller takes the token's cluster over, with every live machine configured for
        it, in place; answers those machines."""
        cluster, _ = self._cluster_grant(token)
        self._fence_cluster(token)
        return [snapshot(self.machines[i]) for i in sorted(self.machines)
                if self.machines[i].cluster == cluster and live(self.machines[i])]

    def _held_machine(self, token, machine_id):
        """The machine a release or delete acts on: a machine serving a cluster needs that
        cluster's grant (whose verdict may hand the cluster over to the caller); an idle one
        needs no grant. Either way, it must be the caller's."""
        check_id("machine_id", machine_id)
        machine = self.get(machine_id)
        if machine.cluster:  # CONFIGURED (the only state with a cluster here)
            if (not token.HasField("cluster") or token.cluster.cluster != machine.cluster
                    or not token.cluster.HasField("grant")):
                raise invalid(f"machine {machine_id} serves cluster {machine.cluster}: "
                              f"the token needs a grant for cluster {machine.cluster}")
            self._fence_cluster(token)
        self._check_owner(token, machine)
        return machine

    def _check_owner(self, token, machine):
        if machine.owner_shard != token.shard_id:
            raise Refusal("not-owner", f"machine {machine.id} belongs to shard "
                          f"{machine.owner_shard}, not {token.shard_id}",
                          machine=machine.id, owner=machine.owner_shard)

    def _counts_against(self, quota):
        if (quota.quota_provider != self.catalog.quota_provider
                or quota.region not in self.catalog.regions):
            raise invalid(f"machines here count against quota {self.catalog.quota_provider} in "
                          f"{self.catalog.regions}, not {quota.quota_provider}/{quota.region}")

    # -- fences --

    def _epoch_verdict(self, token):
        seen = self.epochs.get(token.shard_id, 0)
        if token.shard_epoch < seen:
            raise Refusal("stale-epoch", f"shard {token.shard_id} restarted: epoch "
                          f"{token.shard_epoch} is older than {seen}", seen=str(seen))

    def _fence_epoch(self, token):
        self._epoch_verdict(token)
        self.epochs[token.shard_id] = token.shard_epoch  # not older, so the newest seen

    def _domain_grant(self, token):
        if (not token.HasField("domain") or not token.domain.domain
                or not token.domain.HasField("grant")):
            raise invalid("the token needs a domain grant")
        return token.domain.domain, grant_of(token.domain)

    def _domain_verdict(self, token):
        """Refuses a domain grant older than the newest accepted, or equal to it but held by
        another shard; answers whether it is newer (and so to be recorded)."""
        domain, grant = self._domain_grant(token)
        return self._mark_verdict(self.domains, "domain", domain, grant, token.shard_id)

    def _fence_domain(self, token):
        """Accepts the token's domain grant and records it if it is newer. It moves no machine:
        a domain grant is only the right to create in the domain."""
        if self._domain_verdict(token):
            domain, grant = self._domain_grant(token)
            self.domains[domain] = (grant, token.shard_id)

    def _cluster_grant(self, token):
        if (not token.HasField("cluster") or not token.cluster.cluster
                or not token.cluster.HasField("grant")):
            raise invalid("the token needs a cluster grant")
        check_id("cluster", token.cluster.cluster)
        return token.cluster.cluster, grant_of(token.cluster)

    def _cluster_verdict(self, token):
        """The domain verdict's twin for the token's cluster grant."""
        cluster, grant = self._cluster_grant(token)
        return self._mark_verdict(self.clusters, "cluster", cluster, grant, token.shard_id)

    def _fence_cluster(self, token):
        """Accepts the token's cluster grant; a newer one is recorded and hands the cluster, with
        every live machine configured for it, to the token's shard in place: owner and grant
        change, state and cluster stay."""
        if not self._cluster_verdict(token):
            return
        cluster, grant = self._cluster_grant(token)
        self.clusters[cluster] = (grant, token.shard_id)
        for machine_id in sorted(self.machines):
            m = self.machines[machine_id]
            owner = (m.owner_shard, grant_of(m, "owner_grant"))
            if m.cluster == cluster and live(m) and owner != (token.shard_id, grant):
                m.owner_shard = token.shard_id
                m.owner_grant.CopyFrom(token.cluster.grant)
                self._touch(machine_id)  # a new version, so a lister can tell it moved

    @staticmethod
    def _mark_verdict(marks, kind, name, grant, shard):
        """The verdict on a domain or cluster grant against its mark: older than the mark, or
        equal to it but the mark went to another shard, is `stale-grant` (metadata `kind` =
        name); answers whether the grant is newer than the mark (no mark: newer)."""
        if name not in marks:
            return True
        accepted, holder = marks[name]
        if grant < accepted or (grant == accepted and holder != shard):
            relation = "older than" if grant < accepted else "the same as"
            raise Refusal("stale-grant", f"{kind} {name}: grant {show(grant)} of shard {shard} "
                          f"is {relation} grant {show(accepted)} accepted for shard {holder}",
                          presented=show(grant), accepted=show(accepted), **{kind: name})
        return grant > accepted

    def _quota_verdict(self, quota):
        key = (quota.quota_provider, quota.region)
        presented, accepted = grant_of(quota), self.quotas.get(key)
        if rank(presented) < rank(accepted):
            name = f"{key[0]}/{key[1]}"
            raise Refusal("stale-grant", f"quota {name}: slice table {show(presented)} is older "
                          f"than {show(accepted)} already accepted",
                          quota=name, presented=show(presented), accepted=show(accepted))

    def _fence_quota(self, quota):
        """Accepts a slice table not older than the newest; records it if it is newer. Slices
        are one table for every shard, so this fence is per quota, not per shard."""
        self._quota_verdict(quota)
        key = (quota.quota_provider, quota.region)
        if rank(grant_of(quota)) > rank(self.quotas.get(key)):
            self.quotas[key] = grant_of(quota)

    def _serves(self, domain):
        check_id("domain", domain)
        if self.catalog.domains and domain not in self.catalog.domains:
            raise invalid(f"provider {self.catalog.name} does not serve domain {domain!r}")

    def _touch(self, machine_id):
        """Bumps a changed machine's version and answers a snapshot of it."""
        self.version += 1
        self.machines[machine_id].version = self.version
        return snapshot(self.machines[machine_id])

    # -- the state file's shape: plain JSON, machines as the proto's JSON mapping --

    def to_json(self):
        as_dict = lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True)
        return {
            "version": self.version,
            "machines": [as_dict(self.machines[i]) for i in sorted(self.machines)],
            "domains": [{"domain": d, "grant": g, "shard": s}
                        for d, (g, s) in self.domains.items()],
            "clusters": [{"cluster": c, "grant": g, "shard": s}
                         for c, (g, s) in self.clusters.items()],
            "quotas": [{"quota_provider": q, "region": r, "grant": g}
                       for (q, r), g in self.quotas.items()],
            "epochs": self.epochs,
            "answers": [{"shard": s, "key": k, "intent": i, "machines": [as_dict(m) for m in ms]}
                        for (s, k), (i, ms) in self.answers.items()],
        }

    def restore(self, state):
        machine = lambda d: json_format.ParseDict(d, pb.Machine())
        self.version = state["version"]
        self.machines = {m["id"]: machine(m) for m in state["machines"]}
        self.domains = {d["domain"]: (tuple(d["grant"]), d["shard"]) for d in state["domains"]}
        # A state file from before cluster marks existed has none: no cluster was fenced yet.
        self.clusters = {c["cluster"]: (tuple(c["grant"]), c["shard"])
                         for c in state.get("clusters", [])}
        self.quotas = {(q["quota_provider"], q["region"]): tuple(q["grant"])
                       for q in state["quotas"]}
        self.epochs = dict(state["epochs"])
        self.answers = {(a["shard"], a["key"]): (a["intent"], [machine(m) for m in a["machines"]])
                        for a in state["answers"]}


# ---- the data dir ---------------------------------------------------------------------------

class Store:
    """The book as one JSON file, replaced whole after every call that changed it. Simple and
    crash-safe, though it rewrites everything each time: a provider with many machines would
    keep a journal or a database instead."""

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.path = os.path.join(directory, "state.json")
        self.written = None  # the text on disk, so calls that changed nothing write nothing

    def load(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                self.written = f.read()
        except FileNotFoundError:
            return None
        return json.loads(self.written)

    def save(self, state):
        text = json.dumps(state, indent=1, sort_keys=True)
        if text == self.written:
            return
        # Write a temporary file and fsync it, rename it over the old one (atomic: a crash
        # leaves the old state or the new, never a mix), then fsync the directory so the
        # rename itself survives a power cut.
        temporary = self.path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self.written = text


# ---- the service ----------------------------------------------------------------------------

class Provider:
    """The gRPC service. Every call runs under one lock, so calls are serialised: that is what
    makes the slice count and the idempotency check race-free (twenty concurrent creates see
    each other's machines; twelve concurrent repeats of one key find the first one's answer).
    A mutating call's changes are on disk before the lock is released and the call answered."""

    def __init__(self, book, store, describe):
        self.book, self.store, self.describe = book, store, describe
        self.lock = threading.Lock()

    def _mutate(self, call, request, context):
        with self.lock:
            try:
                outcome = call(request)
            except Refusal as refusal:
                outcome = refusal  # it may still have changed a fence (see Book._call): persist
            if self.store is not None:
                try:
                    self.store.save(self.book.to_json())
                except OSError as e:
                    # A provider must not answer for a change it could not keep.
                    print(f"provider: cannot persist a change ({e}); exiting",
                          file=sys.stderr, flush=True)
                    os._exit(70)
        if isinstance(outcome, Refusal):
            context.abort_with_status(outcome.status())
        return outcome

    def Describe(self, request, context):
        return self.describe

    def ListMachines(self, request, context):
        if request.limit > 1000:
            context.abort_with_status(invalid(f"limit {request.limit} is above 1000").status())
        with self.lock:
            machines, cursor = self.book.list(request.domain, request.owner_shard,
                                              request.cluster, request.cursor,
                                              request.limit or 100)
            # Built under the lock: the response copies the machines before anyone changes them.
            return pb.ListMachinesResponse(machines=machines, next_cursor=cursor)

    def GetMachine(self, request, context):
        with self.lock:
            try:
                return pb.MachineResponse(machine=self.book.get(request.id))
            except Refusal as refusal:
                status = refusal.status()
        context.abort_with_status(status)

    def CreateMachine(self, request, context):
        return pb.MachineResponse(machine=self._mutate(self.book.create, request, context)[0])

    def ConfigureMachine(self, request, context):
        return pb.MachineResponse(machine=self._mutate(self.book.configure, request, context)[0])

    def ReleaseMachine(self, request, context):
        return pb.MachineResponse(machine=self._mutate(self.book.release, request, context)[0])

    def DeleteMachine(self, request, context):
        return pb.MachineResponse(machine=self._mutate(self.book.delete, request, context)[0])

    def ClaimDomain(self, request, context):
        self._mutate(self.book.claim_domain, request, context)
        return pb.ClaimDomainResponse()

    def AdoptCluster(self, request, context):
        return pb.AdoptClusterResponse(
            machines=self._mutate(self.book.adopt_cluster, request, context))


# ---- flags and start-up ---------------------------------------------------------------------

def listed(values, default):
    """Repeatable, comma-separable flags (`--region a --region b` or `--region a,b`)."""
    items = [item.strip() for value in values or [] for item in value.split(",") if item.strip()]
    return items or default


DEFAULT_SHAPES = [("small", (2000, 8192, 0, 0.10)), ("large", (16000, 65536, 0, 0.80)),
                  ("gpu", (32000, 262144, 8, 12.0))]


def parse_shape(text):
    name, _, fields = text.partition("=")
    parts = fields.split(",")
    try:
        cpu, memory, gpus = (int(p) for p in parts[:3])
        price = float(parts[3])
        if (len(parts) != 4 or not name.strip() or min(cpu, memory, gpus) < 0
                or not 0 <= price < float("inf")):
            raise ValueError
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"shape {text!r}: expected NAME=CPU_MILLIS,MEMORY_MIB,GPUS,PRICE_PER_HOUR")
    return name.strip(), (cpu, memory, gpus, price)


def parse_args(argv):
    p = argparse.ArgumentParser(description="A Ballast provider (ballast.provider.v1) in Python.")
    p.add_argument("--listen", default="127.0.0.1:7400",
                   help="HOST:PORT to serve on (port 0 picks one; prints `listening on HOST:PORT`)")
    p.add_argument("--data-dir",
                   help="where state.json is kept (without it: in memory, durable: false)")
    p.add_argument("--name", default="python", help="the provider's name")
    p.add_argument("--quota-provider", help="the quota machines count against (default: the name)")
    p.add_argument("--region", action="append",
                   help="regions (repeat or comma-separate; default: local)")
    p.add_argument("--zone", action="append", help="availability zones, for Describe")
    p.add_argument("--domain", action="append", help="topology domains served (none: any)")
    p.add_argument("--shape", action="append", type=parse_shape,
                   help="NAME=CPU_MILLIS,MEMORY_MIB,GPUS,PRICE_PER_HOUR (repeat)")
    p.add_argument("--capacity-type", action="append",
                   help="capacity types; the first is the default (default: on-demand,spot)")
    p.add_argument("--capacity", type=int,
                   help="most live machines at once (then insufficient-capacity)")
    p.add_argument("--idempotency-keys", type=int, default=100_000,
                   help="answers remembered; the oldest are forgotten first")
    p.add_argument("--proto-dir", default=DEFAULT_PROTO_DIR, help=f"the directory holding {PROTO}")
    args = p.parse_args(argv)
    if args.idempotency_keys < 1:
        p.error("--idempotency-keys must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    global pb
    pb, pb_grpc = load_stubs(args.proto_dir)
    catalog = Catalog(
        name=args.name,
        quota_provider=args.quota_provider or args.name,
        regions=listed(args.region, ["local"]),
        zones=listed(args.zone, []),
        domains=set(listed(args.domain, [])),
        shapes={name: (pb.Resources(cpu_millis=c, memory_mib=m, gpus=g), price)
                for name, (c, m, g, price) in dict(args.shape or DEFAULT_SHAPES).items()},
        capacity_types=listed(args.capacity_type, ["on-demand", "spot"]),
        capacity=args.capacity,
        idempotency_keys=args.idempotency_keys,
    )
    store = Store(args.data_dir) if args.data_dir else None
    # Describe never changes while the process lives, so it is built once.
    describe = pb.DescribeResponse(
        name=catalog.name, contract=CONTRACT, quota_provider=catalog.quota_provider,
        regions=catalog.regions, zones=catalog.zones, domains=sorted(catalog.domains),
        shapes=[pb.Shape(name=name, resources=resources, price_per_hour=price)
                for name, (resources, price) in sorted(catalog.shapes.items())],
        capacity_types=catalog.capacity_types, durable=store is not None)

    book = Book(catalog)
    state = store.load() if store else None
    if state:
        book.restore(state)

    # SO_REUSEPORT (grpcio's default) would let a second provider share the port and split
    # the traffic between two books; refuse to bind instead.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_ProviderServicer_to_server(Provider(book, store, describe), server)
    try:
        port = server.add_insecure_port(args.listen)
    except RuntimeError as e:
        sys.exit(f"provider: cannot listen on {args.listen}: {e}")
    server.start()
    print(f"listening on {args.listen.rsplit(':', 1)[0]}:{port}", flush=True)
    print(f"provider {catalog.name} serving {CONTRACT} (durable: {store is not None}, "
          f"{len(book.machines)} machines)", file=sys.stderr, flush=True)

    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    # Calls in flight finish (each is durable before it answers); new ones are refused.
    server.stop(grace=5).wait()
    print("provider: stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
