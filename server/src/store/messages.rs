//! Messages on disk: a payload by id (the backend's own encoding) and a per-conversation index,
//! with retention by count, age and bytes like the event log. A message written but not yet
//! committed is read back from memory, so a client that asks for a message it was just told
//! about always finds it.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{Retention, Store, StoreError, Ticket, Writes, meta_u64, now_ms};

pub(crate) const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");
/// Insertion order → id: what retention removes first.
pub(crate) const ORDER: TableDefinition<u64, &str> = TableDefinition::new("message_order");
/// (conversation, order) → id.
pub(crate) const CONVERSATIONS: TableDefinition<(&str, u64), &str> = TableDefinition::new("conversations");

const COUNT: &str = "messages.count";
const BYTES: &str = "messages.bytes";
const NEXT: &str = "messages.next_order";

/// One message as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRecord {
    /// Its id.
    pub id: String,
    /// The conversation it belongs to (a contact or room id).
    pub conversation: String,
    /// When it was stored, ms since the epoch.
    pub time_ms: u64,
    /// The backend's encoding of the message.
    pub body: Vec<u8>,
}

fn encode(order: u64, m: &MessageRecord) -> Vec<u8> {
    let conv = m.conversation.as_bytes();
    let mut v = Vec::with_capacity(20 + conv.len() + m.body.len());
    v.extend_from_slice(&order.to_le_bytes());
    v.extend_from_slice(&m.time_ms.to_le_bytes());
    v.extend_from_slice(&(conv.len() as u32).to_le_bytes());
    v.extend_from_slice(conv);
    v.extend_from_slice(&m.body);
    v
}

fn decode(id: &str, v: &[u8]) -> Option<(u64, MessageRecord)> {
    let order = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let time_ms = u64::from_le_bytes(v.get(8..16)?.try_into().ok()?);
    let conv_len = u32::from_le_bytes(v.get(16..20)?.try_into().ok()?) as usize;
    let conversation = String::from_utf8_lossy(v.get(20..20 + conv_len)?).into_owned();
    let body = v.get(20 + conv_len..)?.to_vec();
    Some((order, MessageRecord { id: id.to_owned(), conversation, time_ms, body }))
}

/// How many messages are kept, what they weigh, and the next insertion number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    count: u64,
    bytes: u64,
    next: u64,
}

impl Counters {
    pub(crate) fn read(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Self, StoreError> {
        Ok(Self { count: meta_u64(meta, COUNT)?, bytes: meta_u64(meta, BYTES)?, next: meta_u64(meta, NEXT)? })
    }
    pub(crate) fn write(&self, meta: &mut redb::Table<'_, &'static str, &'static [u8]>) -> Result<(), StoreError> {
        meta.insert(COUNT, self.count.to_le_bytes().as_slice())?;
        meta.insert(BYTES, self.bytes.to_le_bytes().as_slice())?;
        meta.insert(NEXT, self.next.to_le_bytes().as_slice())?;
        Ok(())
    }
}

/// What one stored message weighs: its value, its id three times, its conversation twice.
fn cost(id: &str, value_len: usize, conversation: &str) -> u64 {
    (value_len + 3 * id.len() + 2 * conversation.len() + 24) as u64
}

pub(crate) fn insert(w: &mut Writes<'_>, m: &MessageRecord) -> Result<(), StoreError> {
    let existing = w.messages.get(m.id.as_str())?.and_then(|v| decode(&m.id, v.value()));
    let order = match &existing {
        Some((order, old)) => {
            w.counters.bytes =
                w.counters.bytes.saturating_sub(cost(&old.id, encode(*order, old).len(), &old.conversation));
            if old.conversation != m.conversation {
                w.conversations.remove((old.conversation.as_str(), *order))?;
                w.conversations.insert((m.conversation.as_str(), *order), m.id.as_str())?;
            }
            *order
        }
        None => {
            let order = w.counters.next;
            w.counters.next += 1;
            w.counters.count += 1;
            w.message_order.insert(order, m.id.as_str())?;
            w.conversations.insert((m.conversation.as_str(), order), m.id.as_str())?;
            order
        }
    };
    let v = encode(order, m);
    w.counters.bytes += cost(&m.id, v.len(), &m.conversation);
    w.messages.insert(m.id.as_str(), v.as_slice())?;
    Ok(())
}

/// Drops the oldest messages past the retention's count, bytes or age.
pub(crate) fn retain(w: &mut Writes<'_>, r: Retention) -> Result<(), StoreError> {
    let oldest_allowed = now_ms().saturating_sub(r.age.as_millis() as u64);
    loop {
        let c = w.counters;
        let Some((order, id)) = w.message_order.first()?.map(|(k, v)| (k.value(), v.value().to_owned())) else {
            break;
        };
        let record = w.messages.get(id.as_str())?.and_then(|v| {
            let len = v.value().len();
            decode(&id, v.value()).map(|(_, m)| (m, len))
        });
        let too_old = record.as_ref().is_some_and(|(m, _)| m.time_ms < oldest_allowed);
        if c.count <= r.count && c.bytes <= r.bytes && !too_old && record.is_some() {
            break;
        }
        w.message_order.remove(order)?;
        if let Some((m, len)) = record {
            w.messages.remove(id.as_str())?;
            w.conversations.remove((m.conversation.as_str(), order))?;
            w.counters.bytes = c.bytes.saturating_sub(cost(&id, len, &m.conversation));
        }
        w.counters.count = c.count.saturating_sub(1);
    }
    Ok(())
}

/// The account's messages (see the module docs).
#[derive(Clone, Debug)]
pub struct Messages {
    store: Store,
}

impl Messages {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }

    /// Stores a message (or replaces the one with its id); readable at once, durable per the
    /// store's policy.
    pub fn put(&self, message: MessageRecord) -> Ticket {
        self.store.remember(message)
    }

    /// Replaces a stored message's body (a recall, a downloaded file): `None` when it is not
    /// kept (any more).
    pub async fn update(&self, id: &str, body: Vec<u8>) -> Result<Option<Ticket>, StoreError> {
        let Some(mut m) = self.get_async(id).await? else { return Ok(None) };
        m.body = body;
        Ok(Some(self.put(m)))
    }

    /// A message by id. Blocking when it has to go to the file: on the runtime, use
    /// [`Messages::get_async`].
    pub fn get(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        if let Some(m) = self.store.remembered(id) {
            return Ok(Some(m));
        }
        self.get_committed(id)
    }

    /// A committed message by id. Blocking.
    pub(crate) fn get_committed(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        let tx = self.store.db().begin_read()?;
        let t = tx.open_table(MESSAGES)?;
        Ok(t.get(id)?.and_then(|v| decode(id, v.value())).map(|(_, m)| m))
    }

    /// [`Messages::get`] from the runtime: memory first, the file on the blocking pool.
    pub async fn get_async(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        if let Some(m) = self.store.remembered(id) {
            return Ok(Some(m));
        }
        let (this, id) = (self.clone(), id.to_owned());
        self.store.read(move |_| this.get(&id)).await
    }

    /// The newest `limit` messages of a conversation, oldest first. Blocking.
    pub fn list(&self, conversation: &str, limit: usize) -> Result<Vec<MessageRecord>, StoreError> {
        // What is in memory is read first: a commit landing between the two reads then leaves a
        // message in both (merged below), never in neither.
        let remembered = self.store.remembered_in(conversation);
        let tx = self.store.db().begin_read()?;
        let index = tx.open_table(CONVERSATIONS)?;
        let messages = tx.open_table(MESSAGES)?;
        let mut ids = Vec::new();
        for item in index.range((conversation, 0)..=(conversation, u64::MAX))?.rev().take(limit) {
            ids.push(item?.1.value().to_owned());
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.into_iter().rev() {
            if let Some((_, m)) = messages.get(id.as_str())?.and_then(|v| decode(&id, v.value())) {
                out.push(m);
            }
        }
        // Written but not committed yet: in memory (an update replaces the committed body).
        for m in remembered {
            match out.iter_mut().find(|o| o.id == m.id) {
                Some(o) => *o = m,
                None => out.push(m),
            }
        }
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        Ok(out)
    }

    /// How many messages are kept. Blocking.
    pub fn count(&self) -> Result<u64, StoreError> {
        let tx = self.store.db().begin_read()?;
        let meta = tx.open_table(super::META)?;
        meta_u64(&meta, COUNT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{options, temp_dir};
    use crate::store::{Durability, Retention};

    fn msg(i: u64, conversation: &str) -> MessageRecord {
        MessageRecord {
            id: format!("msg_{i:06}"),
            conversation: conversation.into(),
            time_ms: now_ms(),
            body: format!("body {i}").into_bytes(),
        }
    }

    #[tokio::test]
    async fn messages_are_found_at_once_and_after_a_reopen() {
        let dir = temp_dir();
        let store = Store::open(&dir, options(Durability::Batch)).unwrap();
        let m = store.messages();
        for i in 0..50 {
            m.put(msg(i, if i % 2 == 0 { "wxid_alice" } else { "10001@chatroom" }));
        }
        // Read-your-writes before any commit.
        assert_eq!(m.get_async("msg_000007").await.unwrap().unwrap().body, b"body 7");
        m.update("msg_000008", b"recalled".to_vec()).await.unwrap();
        assert_eq!(m.get("msg_000008").unwrap().unwrap().body, b"recalled");
        let alice = m.list("wxid_alice", 3).unwrap();
        assert_eq!(alice.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["msg_000044", "msg_000046", "msg_000048"]);
        drop(m);
        store.close();
        let store = Store::open(&dir, options(Durability::Batch)).unwrap();
        let m = store.messages();
        assert_eq!(m.get("msg_000008").unwrap().unwrap().body, b"recalled");
        assert_eq!(m.count().unwrap(), 50);
        assert_eq!(m.list("10001@chatroom", 100).unwrap().len(), 25);
        drop(m);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_messages_and_their_index() {
        let dir = temp_dir();
        let mut opts = options(Durability::Always);
        opts.messages = Retention { count: 10, age: std::time::Duration::from_secs(3600), bytes: 1 << 30 };
        let store = Store::open(&dir, opts).unwrap();
        for i in 0..100 {
            store.messages().put(msg(i, "wxid_bob"));
        }
        store.settled().await.unwrap();
        store.close();
        let store = Store::open(&dir, opts).unwrap();
        let m = store.messages();
        assert!(m.get("msg_000089").unwrap().is_none());
        assert!(m.get("msg_000090").unwrap().is_some());
        assert_eq!(m.list("wxid_bob", 100).unwrap().len(), 10);
        drop(m);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
