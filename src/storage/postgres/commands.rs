//! Messages for order actors on other instances (SPEC §13): the instance that
//! took a request leaves a row for the owner of the order's partition, the
//! owner runs it and writes the reply into the same row, and the requester
//! takes the reply (deleting the row). `NOTIFY` on commit wakes both sides at
//! once; a missed notification only costs a poll interval, because the rows
//! are the truth. What a message means is not this module's business: it
//! stores sealed bytes.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{hold, Fence, PgStore};
use crate::storage::pii::Column;
use crate::storage::StorageError;

/// Where a new command is announced; the payload is its partition.
const COMMANDS_CHANNEL: &str = "dropship_commands";
/// Where a reply is announced; the payload is the command's id.
const REPLIES_CHANNEL: &str = "dropship_replies";
/// Where an instance that leaves announces its leases free; the payload is its id.
pub(super) const LEASES_CHANNEL: &str = "dropship_leases";

/// A command waiting for its partition's owner.
#[derive(Debug, Clone)]
pub struct WaitingCommand {
    pub id: i64,
    pub order_id: String,
    pub message: Vec<u8>,
}

/// A wake-up from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A command was left for `partition`.
    Command { partition: u32 },
    /// Command `id` has its reply.
    Reply { id: i64 },
    /// An instance left and gave its leases back: take them now, not at the next round.
    LeasesFreed,
    /// The listening connection was (re)established: notifications may have
    /// been missed, so everyone looks.
    Resync,
}

impl PgStore {
    /// Leaves `message` for the owner of `partition`; its id is what the reply is found by.
    pub async fn submit_command(
        &self,
        partition: u32,
        order_id: &str,
        message: &[u8],
    ) -> Result<i64, StorageError> {
        let sealed = self.pii().seal(Column::ClusterCommand, message)?;
        let order_id = order_id.to_owned();
        let partition = i32::try_from(partition).unwrap_or(i32::MAX);
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let row = client
                .query_one(
                    "WITH command AS (
                         INSERT INTO cluster_commands (partition, order_id, message)
                         VALUES ($1, $2, $3) RETURNING id
                     )
                     SELECT id, pg_notify($4, $1::text) FROM command",
                    &[&partition, &order_id, &sealed, &COMMANDS_CHANNEL],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
    }

    /// Commands without a reply for any of `partitions`, oldest first.
    pub async fn waiting_commands(
        &self,
        partitions: &[u32],
        limit: u32,
    ) -> Result<Vec<WaitingCommand>, StorageError> {
        let partitions: Vec<i32> = partitions
            .iter()
            .map(|p| i32::try_from(*p).unwrap_or(i32::MAX))
            .collect();
        let rows = self
            .run(move |pool| async move {
                let client = pool.get().await?;
                Ok(client
                    .query(
                        "SELECT id, order_id, message FROM cluster_commands
                         WHERE reply IS NULL AND partition = ANY($1)
                         ORDER BY id LIMIT $2",
                        &[&partitions, &i64::from(limit)],
                    )
                    .await?)
            })
            .await?;
        let pii = self.pii();
        rows.iter()
            .map(|row| {
                Ok(WaitingCommand {
                    id: row.get(0),
                    order_id: row.get(1),
                    message: pii.open(Column::ClusterCommand, row.get(2))?,
                })
            })
            .collect()
    }

    /// Writes the owner's reply to command `id`, only while `fence` (the
    /// order's partition lease) holds: an owner that lost the partition
    /// leaves the command to the next one. `false`: the requester gave up
    /// and withdrew the command.
    pub async fn answer_command(
        &self,
        id: i64,
        reply: &[u8],
        fence: Fence,
    ) -> Result<bool, StorageError> {
        let sealed = self.pii().seal(Column::ClusterCommand, reply)?;
        self.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            hold(&tx, &fence).await?;
            let answered = tx
                .execute(
                    "UPDATE cluster_commands SET reply = $2, replied_at = now()
                     WHERE id = $1 AND reply IS NULL",
                    &[&id, &sealed],
                )
                .await?;
            if answered > 0 {
                tx.execute(
                    "SELECT pg_notify($1, $2)",
                    &[&REPLIES_CHANNEL, &id.to_string()],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(answered > 0)
        })
        .await
    }

    /// Takes the replies among `ids` that have arrived, deleting their rows.
    pub async fn take_replies(&self, ids: &[i64]) -> Result<Vec<(i64, Vec<u8>)>, StorageError> {
        let ids = ids.to_vec();
        let rows = self
            .run(move |pool| async move {
                let client = pool.get().await?;
                Ok(client
                    .query(
                        "DELETE FROM cluster_commands WHERE id = ANY($1) AND reply IS NOT NULL
                         RETURNING id, reply",
                        &[&ids],
                    )
                    .await?)
            })
            .await?;
        let pii = self.pii();
        rows.iter()
            .map(|row| Ok((row.get(0), pii.open(Column::ClusterCommand, row.get(1))?)))
            .collect()
    }

    /// Gives up on command `id`; `false` when its reply had already arrived
    /// (then the command did run, and the reply is gone with the row).
    pub async fn withdraw_command(&self, id: i64) -> Result<bool, StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            Ok(client
                .execute(
                    "DELETE FROM cluster_commands WHERE id = $1 AND reply IS NULL",
                    &[&id],
                )
                .await?
                > 0)
        })
        .await
    }

    /// Deletes commands older than `age` (requesters that died waiting):
    /// the leader's sweep.
    pub async fn forget_old_commands(&self, age: Duration) -> Result<u64, StorageError> {
        let seconds = age.as_secs_f64();
        self.run(move |pool| async move {
            let client = pool.get().await?;
            Ok(client
                .execute(
                    "DELETE FROM cluster_commands
                     WHERE created_at < now() - make_interval(secs => $1)",
                    &[&seconds],
                )
                .await?)
        })
        .await
    }

    /// Wake-ups for commands and replies, from a connection of their own
    /// that reconnects by itself (announcing [`Notice::Resync`] each time).
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }
}

/// Keeps a listening connection open on the store's runtime, forwarding
/// notifications into `notices`; it ends with the runtime, when the store goes.
pub(super) fn start_listener(
    io: &tokio::runtime::Handle,
    config: tokio_postgres::Config,
    notices: broadcast::Sender<Notice>,
) {
    io.spawn(async move {
        loop {
            match config.connect(NoTls).await {
                Ok((client, mut connection)) => {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    let statement = format!(
                        "LISTEN {COMMANDS_CHANNEL}; LISTEN {REPLIES_CHANNEL}; LISTEN {LEASES_CHANNEL};"
                    );
                    let listening = {
                        // The connection is driven by the stream: the LISTEN needs both.
                        let mut listen = std::pin::pin!(client.batch_execute(&statement));
                        loop {
                            tokio::select! {
                                done = &mut listen => break done.is_ok(),
                                message = messages.next() => {
                                    if !matches!(message, Some(Ok(_))) {
                                        break false;
                                    }
                                }
                            }
                        }
                    };
                    if listening {
                        let _ = notices.send(Notice::Resync);
                        while let Some(Ok(message)) = messages.next().await {
                            if let AsyncMessage::Notification(n) = message {
                                if let Some(notice) = parse_notice(n.channel(), n.payload()) {
                                    let _ = notices.send(notice);
                                }
                            }
                        }
                    }
                    tracing::warn!(
                        "the connection listening for cluster commands closed; reconnecting"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for cluster commands; retrying");
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

fn parse_notice(channel: &str, payload: &str) -> Option<Notice> {
    match channel {
        COMMANDS_CHANNEL => Some(Notice::Command {
            partition: payload.parse().ok()?,
        }),
        REPLIES_CHANNEL => Some(Notice::Reply {
            id: payload.parse().ok()?,
        }),
        LEASES_CHANNEL => Some(Notice::LeasesFreed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_read_by_channel() {
        assert_eq!(
            parse_notice(COMMANDS_CHANNEL, "7"),
            Some(Notice::Command { partition: 7 })
        );
        assert_eq!(
            parse_notice(REPLIES_CHANNEL, "42"),
            Some(Notice::Reply { id: 42 })
        );
        assert_eq!(parse_notice(REPLIES_CHANNEL, "x"), None);
        assert_eq!(
            parse_notice(LEASES_CHANNEL, "host-1"),
            Some(Notice::LeasesFreed)
        );
        assert_eq!(parse_notice("other", "1"), None);
    }
}
