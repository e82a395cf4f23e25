//! Reading the tables' history: which version of `rfm` is N days of event time older
//! (`query --compare-to Nd`), and the four tables at one result when they are out of step
//! (`query --as-of`). Both walk a table's log entries backwards, newest first.

use deltalake::DeltaTable;

use super::{delta, result_of, AsOf, Lake, LakeError, APP_ID, EVENT_TIME_KEY};

/// What `query --compare-to` compares the results with: a point of the tables' history, or
/// the newest `rfm` version at least `N` days of event time older than the result compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    At(AsOf),
    EventDays(u32),
}

impl std::str::FromStr for Since {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(days) = s.strip_suffix('d').and_then(|d| d.parse::<u32>().ok()) {
            return Ok(Since::EventDays(days));
        }
        s.parse::<AsOf>()
            .map(Since::At)
            .map_err(|e| format!("{e}, nor days of event time before (30d)"))
    }
}

impl Lake {
    /// The newest version of `rfm` whose result's event time is at or before `limit_us`
    /// (microseconds since the epoch), from the commits' metadata.
    pub async fn rfm_version_at_event_time(
        &self,
        limit_us: i64,
        days: u32,
    ) -> Result<u64, LakeError> {
        let rfm = crate::snapshot::tables::RFM;
        let table = self
            .open(rfm)
            .await?
            .ok_or_else(|| LakeError::NoneThatOld {
                days,
                oldest: "no table".into(),
            })?;
        let mut oldest = String::from("none");
        let found = newest_where(&table, rfm, |version, entry| {
            let Some(t) = field(entry, "commitInfo", EVENT_TIME_KEY).and_then(|v| v.as_i64())
            else {
                return false;
            };
            oldest = format!("version {version}, event time {}", micros_text(t));
            t <= limit_us
        })
        .await?;
        found.ok_or(LakeError::NoneThatOld { days, oldest })
    }

    /// `tables` as one result at `at`: each table as of `at`; when they hold different
    /// results (a time while a result was being committed table by table, or tables out of
    /// step after racing or failed publishes), each table ahead is read at its newest
    /// version holding no later result than the others, until all hold one result. Returns
    /// the tables and that result; [`LakeError::Mixed`] when no result is in all of them.
    pub async fn open_one_result(
        &self,
        tables: &[&str],
        at: &AsOf,
    ) -> Result<(Vec<DeltaTable>, Option<i64>), LakeError> {
        let mut opened = Vec::new();
        for name in tables {
            let t = self.open_as_of(name, at).await?;
            let r = result_of(&t, name).await?;
            opened.push((*name, t, r));
        }
        for _ in 0..=tables.len() * 4 {
            let least = opened.iter().map(|(_, _, r)| *r).min().flatten();
            if opened.iter().all(|(_, _, r)| *r == least) {
                return Ok((opened.into_iter().map(|(_, t, _)| t).collect(), least));
            }
            let Some(least) = least else { break };
            for (name, t, r) in opened.iter_mut() {
                if r.is_some_and(|r| r > least) {
                    let v = newest_at_most(t, name, least).await?;
                    *t = self.open_as_of(name, &AsOf::Version(v)).await?;
                    *r = result_of(t, name).await?;
                }
            }
        }
        let held: Vec<_> = opened.iter().map(|(n, _, r)| (*n, *r)).collect();
        Err(LakeError::Mixed(format!("{held:?}")))
    }
}

/// The newest version of `table` (loaded at some version) whose result is at most
/// `result`, read from the log's entries backwards (0, the empty table, at worst).
async fn newest_at_most(table: &DeltaTable, name: &str, result: i64) -> Result<u64, LakeError> {
    let found = newest_where(table, name, |_, entry| {
        field(entry, "txn", "appId").is_some_and(|a| a == APP_ID)
            && field(entry, "txn", "version")
                .and_then(|v| v.as_i64())
                .is_some_and(|r| r <= result)
    })
    .await?;
    Ok(found.unwrap_or(0))
}

/// The newest version from `table`'s loaded one down to 1 whose log entry `wanted` accepts,
/// down to the oldest entry the log still holds.
pub(super) async fn newest_where(
    table: &DeltaTable,
    name: &str,
    mut wanted: impl FnMut(u64, &[u8]) -> bool,
) -> Result<Option<u64>, LakeError> {
    let store = table.log_store();
    for version in (1..=table.version().unwrap_or(0)).rev() {
        let Some(entry) = store
            .read_commit_entry(version)
            .await
            .map_err(|e| delta(name, e))?
        else {
            break;
        };
        if wanted(version, &entry) {
            return Ok(Some(version));
        }
    }
    Ok(None)
}

/// `key` of the action `action` (`txn`, `commitInfo`) in a commit entry, if any.
pub(super) fn field(entry: &[u8], action: &str, key: &str) -> Option<serde_json::Value> {
    std::str::from_utf8(entry).ok()?.lines().find_map(|line| {
        let mut parsed: serde_json::Value = serde_json::from_str(line).ok()?;
        parsed
            .get_mut(action)?
            .get_mut(key)
            .map(serde_json::Value::take)
    })
}

fn micros_text(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| us.to_string())
}
