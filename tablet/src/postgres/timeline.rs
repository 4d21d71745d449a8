//! Timeline histories and divergence, as PostgreSQL (and pg_rewind) define them.
//!
//! Every promotion starts a new timeline and writes `pg_wal/<TLI>.history`: one line per
//! ancestor, `parentTLI<TAB>switchpoint<TAB>reason`, where the switchpoint is the LSN at which
//! the child left that parent. A server's WAL is a prefix of a source's history (so it can
//! simply stream from the source) iff it ends no later than the point where the source's
//! history left the last timeline both share. pg_rewind decides "rewind needed" by exactly this
//! rule; [`divergence`] restates it for servers that are running, where pg_rewind cannot be
//! asked.

use super::replication::Lsn;

/// One timeline of a history, with the WAL range it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimelineSpan {
    pub timeline: u32,
    /// Where this timeline starts (0 for the first timeline).
    pub begin: Lsn,
    /// Where the history left it for a child; `None` for the newest timeline, which is open.
    pub end: Option<Lsn>,
}

/// Parses a timeline history file into the spans leading to `timeline` (the file's own
/// timeline), oldest first, the last one open.
pub(crate) fn parse_history(timeline: u32, text: &str) -> Result<Vec<TimelineSpan>, String> {
    let mut spans = Vec::new();
    let mut begin = Lsn(0);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(parent), Some(switchpoint)) = (fields.next(), fields.next()) else {
            return Err(format!("history line {line:?} has fewer than two fields"));
        };
        let parent: u32 = parent
            .parse()
            .map_err(|_| format!("history line {line:?} has an invalid timeline"))?;
        let switchpoint: Lsn = switchpoint
            .parse()
            .map_err(|_| format!("history line {line:?} has an invalid switchpoint"))?;
        if spans
            .last()
            .is_some_and(|previous: &TimelineSpan| previous.timeline >= parent)
            || parent >= timeline
            || switchpoint < begin
        {
            return Err(format!(
                "history line {line:?} is out of order for timeline {timeline}"
            ));
        }
        spans.push(TimelineSpan {
            timeline: parent,
            begin,
            end: Some(switchpoint),
        });
        begin = switchpoint;
    }
    spans.push(TimelineSpan {
        timeline,
        begin,
        end: None,
    });
    Ok(spans)
}

/// How a server's WAL relates to a source's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Divergence {
    /// The server's WAL is part of the source's history: it can stream from the source.
    Prefix,
    /// The server has WAL the source's history does not contain, beyond `fork` on `timeline`
    /// (the last timeline both share): only a rewind makes it a standby of the source.
    Diverged { fork: Lsn, timeline: u32 },
    /// The histories share no timeline at all.
    Unrelated,
}

/// Compares a server's history and end of WAL with a source's history, as pg_rewind does: walk
/// both from the first timeline while they agree (same timeline, same start); the histories
/// fork where the earlier of the two ends of the last shared timeline lies; the server has
/// diverged iff its WAL goes beyond that point.
pub(crate) fn divergence(
    local: &[TimelineSpan],
    local_end: Lsn,
    source: &[TimelineSpan],
) -> Divergence {
    let shared = local
        .iter()
        .zip(source)
        .take_while(|(mine, theirs)| mine.timeline == theirs.timeline && mine.begin == theirs.begin)
        .count();
    let Some(last_shared) = shared.checked_sub(1) else {
        return Divergence::Unrelated;
    };
    let fork = match (local[last_shared].end, source[last_shared].end) {
        (Some(mine), Some(theirs)) => Some(mine.min(theirs)),
        (Some(end), None) | (None, Some(end)) => Some(end),
        (None, None) => None,
    };
    match fork {
        Some(fork) if local_end > fork => Divergence::Diverged {
            fork,
            timeline: local[last_shared].timeline,
        },
        _ => Divergence::Prefix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    /// Goal: a real PostgreSQL 15 history file (two promotions) parses into contiguous spans.
    #[test]
    fn parses_history_files() {
        let text = "1\t0/3000148\tno recovery target specified\n\n2\t0/5000060\tno recovery target specified\n";
        let spans = parse_history(3, text).unwrap();
        assert_eq!(
            spans,
            vec![
                TimelineSpan {
                    timeline: 1,
                    begin: Lsn(0),
                    end: Some(lsn("0/3000148"))
                },
                TimelineSpan {
                    timeline: 2,
                    begin: lsn("0/3000148"),
                    end: Some(lsn("0/5000060"))
                },
                TimelineSpan {
                    timeline: 3,
                    begin: lsn("0/5000060"),
                    end: None
                },
            ]
        );
        assert_eq!(parse_history(1, "").unwrap().len(), 1);
        for bad in [
            "x\t0/1",
            "1",
            "1\tnot-an-lsn",
            "2\t0/10\n1\t0/20",
            "3\t0/10",
        ] {
            assert!(parse_history(3, bad).is_err(), "{bad:?} was accepted");
        }
    }

    /// Goal: the rewind decision matches pg_rewind's for the cases failover produces.
    #[test]
    fn decides_divergence_like_pg_rewind() {
        let timeline_one = parse_history(1, "").unwrap();
        let promoted_at = lsn("0/3000148");
        let timeline_two = parse_history(2, "1\t0/3000148\tpromoted\n").unwrap();
        let cases = [
            // (what, local history, local end, source history, expected)
            (
                "same timeline",
                &timeline_one,
                lsn("0/9000000"),
                &timeline_one,
                Divergence::Prefix,
            ),
            (
                "old primary stopped exactly where the standby was promoted",
                &timeline_one,
                promoted_at,
                &timeline_two,
                Divergence::Prefix,
            ),
            (
                "old primary wrote past the promotion point",
                &timeline_one,
                lsn("0/3000200"),
                &timeline_two,
                Divergence::Diverged {
                    fork: promoted_at,
                    timeline: 1,
                },
            ),
            (
                "a standby already on the source's timeline",
                &timeline_two,
                lsn("0/7000000"),
                &timeline_two,
                Divergence::Prefix,
            ),
            (
                "the source is the old timeline, the server was promoted and wrote",
                &timeline_two,
                lsn("0/3000300"),
                &timeline_one,
                Divergence::Diverged {
                    fork: promoted_at,
                    timeline: 1,
                },
            ),
        ];
        for (what, local, local_end, source, expected) in cases {
            assert_eq!(divergence(local, local_end, source), expected, "{what}");
        }
        // The same timeline number started at different points (two servers promoted
        // independently): only timeline 1 is shared, up to the earlier switch.
        let other_two = parse_history(2, "1\t0/4000000\tpromoted elsewhere\n").unwrap();
        assert_eq!(
            divergence(&other_two, lsn("0/4000100"), &timeline_two),
            Divergence::Diverged {
                fork: promoted_at,
                timeline: 1
            }
        );
        let unrelated = [TimelineSpan {
            timeline: 5,
            begin: Lsn(0),
            end: None,
        }];
        assert_eq!(
            divergence(&unrelated, Lsn(1), &timeline_one),
            Divergence::Unrelated
        );
    }
}
