//! Rows the database refuses: isolating them within a batch, reading
//! their raw records back, and storing them as dead letters (in the store,
//! and on the dead-letter topic) in the flush transaction.

use std::collections::HashMap;
use std::time::Instant;

use super::*;

impl Writer {
    /// Writes `rows` inside `tx` (COPY, or in upsert mode COPY into the
    /// staging table and the upsert), each attempt under a savepoint; a range
    /// the database refuses for a data reason is narrowed down until the
    /// refused rows are alone ([`Isolator`]). Returns the refused rows (entry
    /// index and why, in batch order) and how many attempts it took; every
    /// other row is written. Any other error ends the flush.
    ///
    /// In upsert mode a refusal raised by the upsert statement (NOT NULL,
    /// CHECK, foreign keys of the target) names no COPY line, so its range is
    /// split in halves; applying the parts in order is equivalent to applying
    /// the whole (see [`crate::postgres::upsert`]).
    pub(super) async fn copy_isolating(
        &self,
        tx: &mut PgConnection,
        target: &Target,
        rows: &[(usize, &[u8])],
        repeats: Vec<bisect::Repeat>,
    ) -> Result<(Vec<(usize, Refusal)>, usize), sqlx::Error> {
        let write_sql = &target.write_sql;
        if rows.is_empty() {
            return Ok((Vec::new(), 0));
        }
        // Deferred constraints are checked per statement, so that a refusal
        // surfaces at the COPY that caused it, not at COMMIT.
        tx.execute("SET CONSTRAINTS ALL IMMEDIATE").await?;
        upsert::prepare(write_sql, tx).await?;
        // Rows repeating an earlier row's unique key (`repeats`, positions
        // in `rows`) are left out of the first pass, and refused without a
        // COPY when that earlier row landed.
        if repeats.is_empty() {
            tx.execute("SAVEPOINT sluice_rows").await?;
            return self.isolate(tx, target, rows).await;
        }
        tx.execute("SAVEPOINT sluice_ordered; SAVEPOINT sluice_rows").await?;
        let is_repeat: std::collections::HashSet<usize> = repeats.iter().map(|r| r.row).collect();
        let first_pass: Vec<(usize, &[u8])> = (0..rows.len())
            .filter(|p| !is_repeat.contains(p))
            .map(|p| rows[p])
            .collect();
        let (mut refused, copies) = self.isolate(tx, target, &first_pass).await?;
        let refused_entries: std::collections::HashSet<usize> = refused.iter().map(|(e, _)| *e).collect();
        if repeats.iter().any(|r| refused_entries.contains(&rows[r.first].0)) {
            // Some earlier row did not land, so a row repeating its key may.
            // Copied after the first pass it would land after later rows,
            // and serial, identity or now() defaults would see it out of
            // offset order: start over, every row in order, and let
            // Postgres refuse the repeats.
            tx.execute("ROLLBACK TO SAVEPOINT sluice_ordered; SAVEPOINT sluice_rows")
                .await?;
            upsert::reset(write_sql, tx).await?;
            let (refused, more) = self.isolate(tx, target, rows).await?;
            return Ok((refused, copies + more));
        }
        refused.extend(repeats.into_iter().map(|r| (rows[r.row].0, r.refusal)));
        refused.sort_by_key(|(e, _)| *e);
        Ok((refused, copies))
    }

    /// Copies `rows` under savepoint `sluice_rows` (which must exist),
    /// isolating the refused ones; the savepoint exists again afterwards.
    pub(super) async fn isolate(
        &self,
        tx: &mut PgConnection,
        target: &Target,
        rows: &[(usize, &[u8])],
    ) -> Result<(Vec<(usize, Refusal)>, usize), sqlx::Error> {
        let write_sql = &target.write_sql;
        let copy_target = write_sql.copy_target(&target.table);
        let mut isolator = Isolator::new(rows.len());
        let mut data = Vec::with_capacity(rows.iter().map(|(_, r)| r.len() + 8).sum());
        while let Some(range) = isolator.next_range() {
            data.clear();
            for (entry, row) in &rows[range.clone()] {
                write_sql.frame(&mut data, row, *entry);
            }
            match upsert::write(write_sql, tx, &data).await {
                Ok(()) => {
                    if isolator.more() {
                        upsert::reset(write_sql, tx).await?;
                        tx.execute("RELEASE SAVEPOINT sluice_rows; SAVEPOINT sluice_rows")
                            .await?;
                    }
                }
                Err(err) if classify(&err) == ErrorClass::Data => {
                    // ROLLBACK TO keeps the savepoint for the next attempt,
                    // and empties the staging table again.
                    tx.execute("ROLLBACK TO SAVEPOINT sluice_rows").await?;
                    isolator.refused(range, Refusal::of(&err, copy_target));
                }
                Err(err) => return Err(err),
            }
        }
        let (refused, copies) = isolator.finish();
        Ok((refused.into_iter().map(|(i, r)| (rows[i].0, r)).collect(), copies))
    }

    /// The dead letters of the next refused rows of `pending`, with their
    /// raw records: kept by the consumer for likely duplicates, prefetched,
    /// else read back from Kafka. About `budget` bytes of raw records at a
    /// time, so that what a flush holds of them stays bounded however many
    /// rows are refused. One that cannot be read back by `deadline` is
    /// stored without its value, and says so. Takes what it returns out of
    /// `pending`.
    pub(super) async fn next_refused_letters(
        &self,
        batch: &Batch,
        pending: &mut Vec<(usize, Refusal)>,
        prefetched: &mut HashMap<Coordinates, Raw>,
        deadline: Instant,
        budget: usize,
    ) -> Vec<(usize, DeadLetter)> {
        let letter = |refusal: Refusal, raw: Option<Raw>| {
            let mut error = refusal.message;
            let raw = raw.unwrap_or_else(|| {
                error.push_str(" (the raw record could not be read back from Kafka; value not stored)");
                Raw {
                    key: None,
                    value: None,
                    headers: "[]".into(),
                }
            });
            DeadLetter {
                key: raw.key,
                value: raw.value,
                headers: raw.headers,
                class: DeadLetterClass::Data,
                sqlstate: Some(refusal.sqlstate.into()),
                error: error.into(),
            }
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut asked: Vec<(usize, Refusal)> = Vec::new();
        let mut rest = Vec::new();
        for (i, refusal) in pending.drain(..) {
            if bytes >= budget {
                rest.push((i, refusal));
                continue;
            }
            let at = self.coordinates(&batch.entries[i]);
            match batch.entries[i]
                .raw
                .as_deref()
                .cloned()
                .or_else(|| prefetched.remove(&at))
            {
                Some(raw) => {
                    bytes += raw.bytes();
                    out.push((i, letter(refusal, Some(raw))));
                }
                None => asked.push((i, refusal)),
            }
        }
        if !asked.is_empty() && bytes < budget {
            let wanted: Vec<Coordinates> = asked
                .iter()
                .map(|(i, _)| self.coordinates(&batch.entries[*i]))
                .collect();
            let refetch = self.refetch.clone();
            let room = budget - bytes;
            let fetched = tokio::task::spawn_blocking(move || {
                let mut refetch = refetch.lock().unwrap_or_else(|e| e.into_inner());
                refetch.fetch(&wanted, refetch_timeout(deadline), room)
            })
            .await;
            let (mut found, complete) = fetched.unwrap_or_else(|_| (HashMap::new(), true));
            for (i, refusal) in asked {
                match found.remove(&self.coordinates(&batch.entries[i])) {
                    Some(raw) => out.push((i, letter(refusal, Some(raw)))),
                    // Not there (retention, Kafka unreachable, out of time).
                    None if complete => out.push((i, letter(refusal, None))),
                    // Left for the next chunk.
                    None => rest.push((i, refusal)),
                }
            }
        } else {
            rest.extend(asked);
        }
        *pending = rest;
        out
    }

    /// What the dead-letter store keeps of `letter`, the entry's.
    pub(super) fn stored<'a>(&'a self, e: &Entry, letter: &'a DeadLetter) -> Stored<'a> {
        Stored {
            topic: self.topics.name(e.tp.topic),
            partition: e.tp.partition,
            offset: e.offset,
            timestamp_ms: e.timestamp_ms,
            letter,
        }
    }

    /// Inserts `letters` in the flush transaction and produces them to the
    /// dead-letter topic, if any, before COMMIT (see `dlq`): a crash repeats
    /// rather than loses them. A producer failure is not a database failure:
    /// it is returned as such, for the caller to roll back and retry.
    pub(super) async fn store_letters(
        &self,
        tx: &mut PgConnection,
        letters: &[Stored<'_>],
        deadline: Instant,
    ) -> Result<Letters, sqlx::Error> {
        if letters.is_empty() {
            return Ok(Letters::Stored(0));
        }
        let inserted = dead_letters::insert(tx, &self.pipeline.name, letters).await?;
        if let Some(dlq) = &self.dlq {
            // By the flush's deadline, less a tenth of `write_timeout` kept
            // for the rollback or the commit. Out of time already: the
            // database took it, and the flush timed out as it would have.
            let produce_by = deadline.checked_sub(self.control.write_timeout / 10);
            let Some(produce_by) = produce_by.filter(|by| *by > Instant::now()) else {
                return Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    WriteTimedOut(self.control.write_timeout),
                )));
            };
            if let Err(err) = dlq.send(&self.pipeline.name, letters, produce_by).await {
                return Ok(Letters::DlqFailed(err));
            }
        }
        Ok(Letters::Stored(inserted))
    }

    /// Where an entry's record is in Kafka.
    pub(super) fn coordinates(&self, e: &Entry) -> Coordinates {
        (self.topics.name(e.tp.topic).to_owned(), e.tp.partition, e.offset)
    }
}
