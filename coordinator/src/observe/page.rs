//! The status page: plain server-rendered HTML with inline style and a few lines of script
//! (refresh, relative times). No CDN, no build step: it works on an air-gapped operator host.

use std::fmt::Write as _;

use crate::replica::Replica;
use crate::status::status_report;

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn age(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "never".into();
    }
    let seconds = now_ms.saturating_sub(then_ms) / 1000;
    match seconds {
        0..=119 => format!("{seconds} s ago"),
        120..=7199 => format!("{} min ago", seconds / 60),
        _ => format!("{} h ago", seconds / 3600),
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#222}\
table{border-collapse:collapse;margin:8px 0 20px}\
th,td{border-bottom:1px solid #ddd;padding:4px 12px;text-align:left}\
th{background:#f4f4f4}.ok{color:#1a7f37}.bad{color:#cf222e}\
.leader{font-weight:bold}.muted{color:#777}code{font-size:13px}";

/// Renders the page from this replica's view.
pub fn render(replica: &Replica) -> String {
    let status = status_report(replica);
    let now = ballast_protocol::clock::unix_ms();
    let header = status.header.clone().unwrap_or_default();
    let view = replica.view();
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Ballast replica {id}</title>\
         <style>{STYLE}</style></head><body>\
         <h1>Ballast replica {id} <span class=\"muted\">({az}, {state})</span></h1>\
         <p>Cluster <code id=\"cluster\">{cluster}</code> · revision {revision} · term {term} · \
         restore epoch {epoch} · leader <span id=\"leader\" class=\"leader\">{leader}</span></p>",
        id = replica.id,
        az = escape(&status.az),
        state = escape(&status.state),
        cluster = escape(&header.cluster_id),
        revision = header.revision,
        term = header.raft_term,
        epoch = header.restore_epoch,
        leader = match view.leader {
            Some(id) => format!("replica {id} at {}", escape(&status.leader_address)),
            None => "none (election in progress or no quorum)".into(),
        },
    );

    let _ = write!(
        html,
        "<h2>Members</h2><table id=\"members\"><tr><th>id</th><th>address</th><th>AZ</th>\
         <th>role</th><th>health</th><th>matched index</th><th>lag</th><th>last contact</th></tr>"
    );
    for member in &status.members {
        let contact = if member.id == replica.id {
            "self".to_string()
        } else {
            replica
                .peer_contacts
                .age(member.id)
                .map(|a| format!("{} ms ago", a.as_millis()))
                .unwrap_or_else(|| "—".into())
        };
        let _ = write!(
            html,
            "<tr class=\"member{leader_class}\" data-id=\"{id}\"><td>{id}</td><td>{address}</td>\
             <td>{az}</td><td>{role}{leader_mark}</td><td class=\"{health_class}\">{health}</td>\
             <td>{matched}</td><td>{lag}</td><td>{contact}</td></tr>",
            health_class = if member.health == "unreachable" {
                "bad"
            } else {
                "ok"
            },
            health = escape(&member.health),
            id = member.id,
            leader_class = if member.leader { " leader" } else { "" },
            address = escape(&member.address),
            az = escape(&member.az),
            role = escape(&member.role),
            leader_mark = if member.leader { " (leader)" } else { "" },
            matched = member.matched_index,
            lag = member.lag,
        );
    }
    html.push_str("</table>");

    if !status.warnings.is_empty() {
        html.push_str("<h2>Warnings</h2><ul id=\"warnings\">");
        for warning in &status.warnings {
            let _ = write!(html, "<li class=\"bad\">{}</li>", escape(warning));
        }
        html.push_str("</ul>");
    }
    if let Some(evacuation) = &status.evacuation {
        let _ = write!(
            html,
            "<h2>Evacuation</h2><p id=\"evacuation\" class=\"{}\">{}: {} (lapsed {}, evacuating {}; \
             leases extended by {} ms)</p>",
            if evacuation.mode == "normal" {
                "ok"
            } else {
                "bad"
            },
            escape(&evacuation.mode),
            escape(&evacuation.reason),
            evacuation.lapsed.len(),
            evacuation.evacuating.len(),
            evacuation.allowance_ms
        );
    }
    if let Some(placement) = &status.placement {
        let _ = write!(
            html,
            "<h2>Placement</h2><p id=\"placement\" class=\"{}\">{}</p>",
            if placement.healthy { "ok" } else { "bad" },
            escape(&placement.message)
        );
    }

    let shards = {
        let fleet = replica.state.fleet();
        crate::status::shard_messages(&fleet, replica.shard_leases())
    };
    let _ = write!(
        html,
        "<h2>Shards ({count})</h2><p>{domains} domains · {bindings} bindings · {quotas} quotas · \
         {providers} providers</p><table id=\"shards\"><tr><th>shard</th><th>AZ</th><th>status</th>\
         <th>lease</th><th>domains</th><th>bindings</th></tr>",
        count = shards.len(),
        domains = status.domain_count,
        bindings = status.binding_count,
        quotas = status.quota_count,
        providers = status.provider_count,
    );
    for shard in &shards {
        let lease = if shard.lease_expires_at_ms >= now {
            format!(
                "<span class=\"ok\">{} s left</span>",
                (shard.lease_expires_at_ms - now) / 1000
            )
        } else {
            format!(
                "<span class=\"bad\">expired {}</span>",
                age(now, shard.lease_expires_at_ms)
            )
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{lease}</td><td>{}</td><td>{}</td></tr>",
            escape(&shard.id),
            escape(&shard.az),
            escape(&shard.status),
            shard.domain_count,
            shard.binding_count
        );
    }
    html.push_str("</table>");

    let dr = status.dr.unwrap_or_default();
    if dr.destination.is_empty() && dr.exports_total == 0 {
        html.push_str("<h2>Disaster recovery</h2><p id=\"dr\" class=\"muted\">no scheduled exports (--dr-destination not set)</p>");
    } else {
        let _ = write!(
            html,
            "<h2>Disaster recovery</h2><p id=\"dr\">last export {last} ({archive}, {size} bytes in \
             {duration} ms) · {exports} exports, <span class=\"{fail_class}\">{failures} \
             failures</span>{error}</p>",
            last = age(now, dr.last_success_unix_ms),
            archive = escape(&dr.last_archive),
            size = dr.last_size_bytes,
            duration = dr.last_duration_ms,
            exports = dr.exports_total,
            fail_class = if dr.failures_total == 0 { "ok" } else { "bad" },
            failures = dr.failures_total,
            error = if dr.last_error.is_empty() {
                String::new()
            } else {
                format!(" · last error: {}", escape(&dr.last_error))
            },
        );
    }
    let _ = write!(
        html,
        "<p class=\"muted\">Rendered <span id=\"rendered\" data-ms=\"{now}\">just now</span> · \
         <a href=\"/metrics\">metrics</a> · <a href=\"/readyz\">readiness</a></p>\
         <script>\
         const r=document.getElementById('rendered');\
         setInterval(()=>{{r.textContent=Math.round((Date.now()-Number(r.dataset.ms))/1000)+' s ago';}},1000);\
         setTimeout(()=>location.reload(),5000);\
         document.body.dataset.members=document.querySelectorAll('tr.member').length;\
         </script></body></html>"
    );
    html
}

#[cfg(test)]
mod tests {
    use super::{age, escape};

    #[test]
    fn text_is_escaped_and_ages_read_naturally() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(age(10_000, 0), "never");
        assert_eq!(age(10_000, 5_000), "5 s ago");
        assert_eq!(age(600_000, 1), "9 min ago");
    }
}
