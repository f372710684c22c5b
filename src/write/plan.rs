//! How a changed file becomes an object again: which parts are server-side
//! copies of the version it was opened at, and which are uploaded from the
//! spool. Pure policy, unit-tested without I/O.
//!
//! The goal is to move as few bytes as possible over the network within
//! S3's multipart rules (every part but the last at least 5 MiB, none over
//! 5 GiB, at most 10,000): runs of unchanged bytes of 5 MiB or more are
//! copied by S3 itself (UploadPartCopy); everything else is sent, including
//! unchanged bytes next to changes that a copy part cannot cover (those are
//! fetched into the spool first).

use std::ops::Range;

/// S3's smallest part (all but the last part of an upload).
pub const MIN_PART: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART: u64 = 5 << 30;
/// Parts an upload may have, kept under S3's 10,000.
const MAX_PARTS: u64 = 9_000;

/// Where one part's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedPart {
    /// Copied server-side from the same range of the base version.
    Copy(Range<u64>),
    /// Sent from the spool, which must hold every byte of the range.
    Send(Range<u64>),
}

/// How the new version is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitPlan {
    /// One PUT of the whole file from the spool.
    Single,
    /// A multipart upload of these parts, in order.
    Multipart(Vec<PlannedPart>),
}

/// Plans the upload of a file of `size` bytes whose bytes in `unchanged`
/// (sorted, disjoint ranges) are still those of the base version at the
/// same offsets and not in the spool. Files under `single_below` without a
/// copyable run are one PUT.
pub fn plan(size: u64, unchanged: &[Range<u64>], part_size: u64, single_below: u64) -> CommitPlan {
    let copyable: Vec<Range<u64>> = unchanged
        .iter()
        .filter(|r| r.end - r.start >= MIN_PART)
        .cloned()
        .collect();
    if copyable.is_empty() && size < single_below {
        return CommitPlan::Single;
    }
    let part_size = part_size.max(MIN_PART).max(size.div_ceil(MAX_PARTS));
    let mut parts = Vec::new();
    // Bytes to send, not yet cut into parts.
    let mut pending: Option<Range<u64>> = None;
    let mut pos = 0;
    for run in copyable {
        extend(&mut pending, pos..run.start);
        let mut copy = run.clone();
        if let Some(p) = &mut pending {
            let short = MIN_PART.saturating_sub(p.end - p.start);
            if short > 0 {
                // A part to send must reach the minimum before a copy may
                // follow it: take the bytes it lacks from the copy.
                if copy.end - copy.start >= short + MIN_PART {
                    p.end += short;
                    copy.start += short;
                } else {
                    p.end = copy.end;
                    pos = run.end;
                    continue;
                }
            }
        }
        if let Some(p) = pending.take() {
            send_parts(&mut parts, p, part_size);
        }
        copy_parts(&mut parts, copy);
        pos = run.end;
    }
    extend(&mut pending, pos..size);
    if let Some(p) = pending {
        send_parts(&mut parts, p, part_size);
    }
    CommitPlan::Multipart(parts)
}

fn extend(pending: &mut Option<Range<u64>>, more: Range<u64>) {
    if more.start >= more.end {
        return;
    }
    match pending {
        Some(p) => p.end = more.end,
        None => *pending = Some(more),
    }
}

/// Cuts `range` into parts of `part_size`; a short remainder joins the part
/// before it, so every part but the upload's last reaches the minimum.
fn send_parts(parts: &mut Vec<PlannedPart>, range: Range<u64>, part_size: u64) {
    let first = parts.len();
    let mut start = range.start;
    while start < range.end {
        let end = (start + part_size).min(range.end);
        parts.push(PlannedPart::Send(start..end));
        start = end;
    }
    if parts.len() - first >= 2 {
        if let Some(PlannedPart::Send(last)) = parts.last().cloned() {
            if last.end - last.start < MIN_PART {
                parts.pop();
                if let Some(PlannedPart::Send(prev)) = parts.last_mut() {
                    prev.end = last.end;
                }
            }
        }
    }
}

/// Cuts a copyable run into equal parts of at most [`MAX_PART`].
fn copy_parts(parts: &mut Vec<PlannedPart>, range: Range<u64>) {
    let len = range.end - range.start;
    let n = len.div_ceil(MAX_PART).max(1);
    let each = len.div_ceil(n);
    let mut start = range.start;
    while start < range.end {
        let end = (start + each).min(range.end);
        parts.push(PlannedPart::Copy(start..end));
        start = end;
    }
}

#[cfg(test)]
// The unchanged runs are a list; one run is the common case, not a mistake.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn check_rules(size: u64, plan: &CommitPlan) {
        let CommitPlan::Multipart(parts) = plan else {
            return;
        };
        let mut pos = 0;
        for (i, p) in parts.iter().enumerate() {
            let r = match p {
                PlannedPart::Copy(r) | PlannedPart::Send(r) => r,
            };
            assert_eq!(r.start, pos, "parts are contiguous: {parts:?}");
            assert!(r.end - r.start <= MAX_PART);
            if i + 1 < parts.len() {
                assert!(r.end - r.start >= MIN_PART, "part {i} too small: {parts:?}");
            }
            pos = r.end;
        }
        assert_eq!(pos, size, "parts cover the file: {parts:?}");
    }

    #[test]
    fn an_append_to_a_large_object_copies_it_and_sends_only_the_new_bytes() {
        let size = 1024 * MIB + MIB;
        let p = plan(size, &[0..1024 * MIB], 8 * MIB, 16 * MIB);
        assert_eq!(
            p,
            CommitPlan::Multipart(vec![
                PlannedPart::Copy(0..1024 * MIB),
                PlannedPart::Send(1024 * MIB..size)
            ])
        );
        check_rules(size, &p);
    }

    #[test]
    fn small_files_and_short_runs_are_one_put() {
        assert_eq!(
            plan(3 * MIB, &[0..2 * MIB], 8 * MIB, 16 * MIB),
            CommitPlan::Single
        );
        assert_eq!(plan(100, &[], 8 * MIB, 16 * MIB), CommitPlan::Single);
    }

    #[test]
    fn a_change_at_the_start_borrows_from_the_copy_to_reach_the_minimum() {
        let size = 100 * MIB;
        let p = plan(size, &[4096..size], 8 * MIB, 16 * MIB);
        assert_eq!(
            p,
            CommitPlan::Multipart(vec![
                PlannedPart::Send(0..MIN_PART),
                PlannedPart::Copy(MIN_PART..size)
            ])
        );
        check_rules(size, &p);
    }

    #[test]
    fn a_change_in_the_middle_is_sent_between_two_copies() {
        let size = 64 * MIB;
        let p = plan(size, &[0..30 * MIB, 30 * MIB + 10..size], 8 * MIB, 16 * MIB);
        check_rules(size, &p);
        let CommitPlan::Multipart(parts) = &p else {
            panic!("{p:?}")
        };
        let sent: u64 = parts
            .iter()
            .map(|p| match p {
                PlannedPart::Send(r) => r.end - r.start,
                PlannedPart::Copy(_) => 0,
            })
            .sum();
        assert_eq!(sent, MIN_PART, "{parts:?}");
        assert_eq!(parts.len(), 3);
    }

    #[test]
    fn a_copy_too_short_after_borrowing_is_sent_instead() {
        let size = 20 * MIB;
        let p = plan(size, &[MIB..8 * MIB, 9 * MIB..size], 8 * MIB, 16 * MIB);
        check_rules(size, &p);
    }

    #[test]
    fn huge_runs_are_copied_in_parts_of_at_most_5_gib() {
        let size = 12 * 1024 * MIB;
        let p = plan(size, &[0..size - MIB], 8 * MIB, 16 * MIB);
        check_rules(size, &p);
        let CommitPlan::Multipart(parts) = &p else {
            panic!()
        };
        assert_eq!(
            parts
                .iter()
                .filter(|p| matches!(p, PlannedPart::Copy(_)))
                .count(),
            3
        );
    }

    #[test]
    fn a_large_file_without_copyable_runs_is_sent_in_parts() {
        let size = 40 * MIB + 3;
        let p = plan(size, &[], 8 * MIB, 16 * MIB);
        check_rules(size, &p);
        let CommitPlan::Multipart(parts) = &p else {
            panic!()
        };
        assert_eq!(parts.len(), 5);
    }

    #[test]
    fn every_mix_of_changes_keeps_the_rules() {
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..2000 {
            let size = next(200 * MIB) + 1;
            let mut unchanged = Vec::new();
            let mut pos = next(3 * MIB);
            while pos < size {
                let len = next(30 * MIB) + 1;
                let end = (pos + len).min(size);
                unchanged.push(pos..end);
                pos = end + next(8 * MIB) + 1;
            }
            check_rules(size, &plan(size, &unchanged, 8 * MIB, 16 * MIB));
        }
    }
}
