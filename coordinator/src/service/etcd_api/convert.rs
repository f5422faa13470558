//! Wire (etcd protobuf) ⇄ KV model conversions, with etcd's input checks.

use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::mvccpb;
use tonic::Status;

use crate::kv::{
    Compare, CompareResult, CompareTarget, DeleteOp, Event, EventKind, KeyRange, KeyValue, KvReply,
    Op, PutOp, RangeOp, RangeReply, SortOrder, SortTarget, TxnOp,
};

fn revision(field: &str, value: i64) -> Result<u64, Status> {
    if value < 0 {
        return Err(Status::invalid_argument(format!(
            "etcdserver: {field} must not be negative"
        )));
    }
    Ok(value as u64)
}

/// A range request as a model op.
pub fn range_op(r: &epb::RangeRequest) -> Result<RangeOp, Status> {
    Ok(RangeOp {
        range: KeyRange {
            key: r.key.clone(),
            end: r.range_end.clone(),
        },
        limit: revision("limit", r.limit)?,
        revision: revision("revision", r.revision.max(0))?,
        sort_order: match r.sort_order() {
            epb::range_request::SortOrder::None => SortOrder::None,
            epb::range_request::SortOrder::Ascend => SortOrder::Ascend,
            epb::range_request::SortOrder::Descend => SortOrder::Descend,
        },
        sort_target: match r.sort_target() {
            epb::range_request::SortTarget::Key => SortTarget::Key,
            epb::range_request::SortTarget::Version => SortTarget::Version,
            epb::range_request::SortTarget::Create => SortTarget::Create,
            epb::range_request::SortTarget::Mod => SortTarget::Mod,
            epb::range_request::SortTarget::Value => SortTarget::Value,
        },
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: revision("min_mod_revision", r.min_mod_revision)?,
        max_mod_revision: revision("max_mod_revision", r.max_mod_revision)?,
        min_create_revision: revision("min_create_revision", r.min_create_revision)?,
        max_create_revision: revision("max_create_revision", r.max_create_revision)?,
    })
}

/// A put request as a model op.
pub fn put_op(p: &epb::PutRequest) -> PutOp {
    PutOp {
        key: p.key.clone(),
        value: p.value.clone(),
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

/// A delete request as a model op.
pub fn delete_op(d: &epb::DeleteRangeRequest) -> DeleteOp {
    DeleteOp {
        range: KeyRange {
            key: d.key.clone(),
            end: d.range_end.clone(),
        },
        prev_kv: d.prev_kv,
    }
}

fn op(o: &epb::RequestOp) -> Result<Op, Status> {
    use epb::request_op::Request;
    match &o.request {
        Some(Request::RequestRange(r)) => Ok(Op::Range(range_op(r)?)),
        Some(Request::RequestPut(p)) => Ok(Op::Put(put_op(p))),
        Some(Request::RequestDeleteRange(d)) => Ok(Op::Delete(delete_op(d))),
        Some(Request::RequestTxn(t)) => Ok(Op::Txn(txn_op(t)?)),
        None => Err(Status::invalid_argument(
            "etcdserver: a transaction operation has no request",
        )),
    }
}

fn compare(c: &epb::Compare) -> Result<Compare, Status> {
    use epb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let target = match (c.target(), &c.target_union) {
        (T::Version, Some(U::Version(v))) => CompareTarget::Version(*v),
        (T::Create, Some(U::CreateRevision(v))) => CompareTarget::Create(*v),
        (T::Mod, Some(U::ModRevision(v))) => CompareTarget::Mod(*v),
        (T::Value, Some(U::Value(v))) => CompareTarget::Value(v.clone()),
        (T::Lease, Some(U::Lease(v))) => CompareTarget::Lease(*v),
        // proto3 drops zero values: an absent operand is 0 (or empty).
        (T::Version, None) => CompareTarget::Version(0),
        (T::Create, None) => CompareTarget::Create(0),
        (T::Mod, None) => CompareTarget::Mod(0),
        (T::Value, None) => CompareTarget::Value(Vec::new()),
        (T::Lease, None) => CompareTarget::Lease(0),
        _ => {
            return Err(Status::invalid_argument(
                "etcdserver: compare target and operand do not match",
            ));
        }
    };
    Ok(Compare {
        range: KeyRange {
            key: c.key.clone(),
            end: c.range_end.clone(),
        },
        target,
        result: match c.result() {
            R::Equal => CompareResult::Equal,
            R::Greater => CompareResult::Greater,
            R::Less => CompareResult::Less,
            R::NotEqual => CompareResult::NotEqual,
        },
    })
}

/// A transaction request as a model op.
pub fn txn_op(t: &epb::TxnRequest) -> Result<TxnOp, Status> {
    Ok(TxnOp {
        compare: t.compare.iter().map(compare).collect::<Result<_, _>>()?,
        success: t.success.iter().map(op).collect::<Result<_, _>>()?,
        failure: t.failure.iter().map(op).collect::<Result<_, _>>()?,
    })
}

/// A stored key on the wire.
pub fn kv(k: &KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: k.key.to_vec(),
        create_revision: k.create_revision as i64,
        mod_revision: k.mod_revision as i64,
        version: k.version as i64,
        value: k.value.bytes().to_vec(),
        lease: k.lease,
    }
}

/// A history event on the wire.
pub fn event(e: &Event, prev_kv: bool) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            EventKind::Put => mvccpb::event::EventType::Put as i32,
            EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv(&e.kv)),
        prev_kv: if prev_kv {
            e.prev.as_ref().map(kv)
        } else {
            None
        },
    }
}

/// A range result on the wire.
pub fn range_response(r: &RangeReply, header: epb::ResponseHeader) -> epb::RangeResponse {
    epb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.iter().map(kv).collect(),
        more: r.more,
        count: r.count as i64,
    }
}

/// A model reply as a transaction response op.
pub fn response_op(reply: &KvReply, header: &epb::ResponseHeader) -> epb::ResponseOp {
    use epb::response_op::Response;
    let response = match reply {
        KvReply::Range(r) => Response::ResponseRange(range_response(r, *header)),
        KvReply::Put { prev } => Response::ResponsePut(epb::PutResponse {
            header: Some(*header),
            prev_kv: prev.as_ref().map(kv),
        }),
        KvReply::Delete { deleted, prev } => {
            Response::ResponseDeleteRange(epb::DeleteRangeResponse {
                header: Some(*header),
                deleted: *deleted as i64,
                prev_kvs: prev.iter().map(kv).collect(),
            })
        }
        KvReply::Txn {
            succeeded,
            responses,
        } => Response::ResponseTxn(epb::TxnResponse {
            header: Some(*header),
            succeeded: *succeeded,
            responses: responses.iter().map(|r| response_op(r, header)).collect(),
        }),
        KvReply::Compacted | KvReply::LeaseGranted { .. } | KvReply::LeaseRevoked => {
            Response::ResponseRange(epb::RangeResponse::default())
        }
    };
    epb::ResponseOp {
        response: Some(response),
    }
}
