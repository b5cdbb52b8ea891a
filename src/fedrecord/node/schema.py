"""The node database: one schema for both roles, applied by versioned migrations."""

from __future__ import annotations

from fedrecord.storage.sqlite import Migration

MIGRATIONS = (
    Migration(
        version=1,
        description="records, peers, invitations, documents, audit log, outbox, nonces",
        statements=(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
            # Every signed record the node holds, exactly as received (never re-encoded).
            "CREATE TABLE records (id BLOB PRIMARY KEY, typ TEXT NOT NULL, signer TEXT NOT NULL,"
            " subject BLOB, encoded BLOB NOT NULL, received INTEGER NOT NULL)",
            "CREATE INDEX records_by_type ON records (typ, signer)",
            "CREATE INDEX records_by_subject ON records (subject)",
            "CREATE TABLE nonces (signer TEXT NOT NULL, nonce TEXT NOT NULL, expires INTEGER NOT NULL,"
            " PRIMARY KEY (signer, nonce))",
            "CREATE TABLE peers (did TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL,"
            " endpoint TEXT NOT NULL, profile BLOB NOT NULL)",
            # Only a hash of each invitation token is kept: the database alone cannot be used to connect.
            "CREATE TABLE invitations (token_hash BLOB PRIMARY KEY, label TEXT NOT NULL,"
            " expires INTEGER NOT NULL, used_by TEXT, grant_id BLOB)",
            # Documents this node holds.  The key is wrapped under a key only this node's secrets give
            # (node/keys_at_rest.py; before, sealed to its own X25519 key); destroying the
            # sealed key and the ciphertext file destroys the document.
            "CREATE TABLE documents (id BLOB PRIMARY KEY, patient TEXT NOT NULL, state TEXT NOT NULL,"
            " author TEXT NOT NULL, deposit BLOB, grant_id BLOB, title TEXT NOT NULL, doc_type TEXT NOT NULL,"
            " category TEXT NOT NULL, labels TEXT NOT NULL, date INTEGER NOT NULL, added INTEGER,"
            " size INTEGER NOT NULL, hidden INTEGER NOT NULL DEFAULT 0, sealed_key BLOB)",
            "CREATE TABLE audit (seq INTEGER PRIMARY KEY, receipt_id BLOB NOT NULL UNIQUE,"
            " receipt BLOB NOT NULL, reader TEXT NOT NULL, doc BLOB NOT NULL, grant_id BLOB NOT NULL,"
            " purpose TEXT NOT NULL, at INTEGER NOT NULL, prev_hash BLOB NOT NULL, entry_hash BLOB NOT NULL,"
            " countersignature BLOB NOT NULL)",
            "CREATE TABLE connections (patient TEXT PRIMARY KEY, endpoint TEXT NOT NULL, profile BLOB NOT NULL,"
            " deposit_grant BLOB, head_seq INTEGER NOT NULL DEFAULT -1, head BLOB,"
            " polled INTEGER NOT NULL DEFAULT 0)",
            # Grant chains delegated to this node (US-9): root first, the last link addressed to us.
            "CREATE TABLE delegations (leaf BLOB PRIMARY KEY, patient TEXT NOT NULL, chain BLOB NOT NULL)",
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL,"
            " payload BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL,"
            " last_error TEXT, done INTEGER NOT NULL DEFAULT 0)",
        ),
    ),
    Migration(
        version=2,
        description="view epoch: counts the changes to records and documents, for caches of sync views",
        statements=(
            # A change to what a peer may see changes records or documents; nonces, audit entries and
            # outbox rows do not.  The count moves in the same transaction as the change, whichever
            # process (the node, a CLI command) made it.
            "CREATE TABLE view_epoch (n INTEGER NOT NULL)",
            "INSERT INTO view_epoch (n) VALUES (0)",
            "CREATE TRIGGER records_insert_epoch AFTER INSERT ON records"
            " BEGIN UPDATE view_epoch SET n = n + 1; END",
            "CREATE TRIGGER records_update_epoch AFTER UPDATE ON records"
            " BEGIN UPDATE view_epoch SET n = n + 1; END",
            "CREATE TRIGGER records_delete_epoch AFTER DELETE ON records"
            " BEGIN UPDATE view_epoch SET n = n + 1; END",
            "CREATE TRIGGER documents_insert_epoch AFTER INSERT ON documents"
            " BEGIN UPDATE view_epoch SET n = n + 1; END",
            "CREATE TRIGGER documents_update_epoch AFTER UPDATE ON documents"
            " BEGIN UPDATE view_epoch SET n = n + 1; END",
            "CREATE TRIGGER documents_delete_epoch AFTER DELETE ON documents"
            " BEGIN UPDATE view_epoch SET n = n + 1; END",
        ),
    ),
    Migration(
        version=3,
        description="audit log indexes: the patient's page lists it by reader, by document and by time",
        statements=(
            # Each index ends with the rowid (seq): pages walk them newest first, by (at, seq).
            "CREATE INDEX audit_by_reader ON audit (reader, at)",
            "CREATE INDEX audit_by_doc ON audit (doc, at)",
            "CREATE INDEX audit_by_time ON audit (at)",
        ),
    ),
    Migration(
        version=4,
        description="documents indexes: the patient's page lists the record newest first, by category",
        statements=(
            # Also what the inbox and every "WHERE state = ..." read use instead of a scan of the table.
            "CREATE INDEX documents_by_state_date ON documents (state, date, id)",
            "CREATE INDEX documents_by_state_category ON documents (state, category, date, id)",
        ),
    ),
    Migration(
        version=5,
        description="audit_docs: every document an audit entry covers (a batch receipt names several)",
        statements=(
            # Keyed as audit_by_doc was, (doc, at, seq): the page walks one document's reads newest first.
            "CREATE TABLE audit_docs (doc BLOB NOT NULL, at INTEGER NOT NULL, seq INTEGER NOT NULL,"
            " PRIMARY KEY (doc, at, seq)) WITHOUT ROWID",
            "CREATE INDEX audit_docs_by_seq ON audit_docs (seq)",
            "INSERT INTO audit_docs (doc, at, seq) SELECT doc, at, seq FROM audit",
        ),
    ),
    Migration(
        version=6,
        description="documents.stream: the ciphertext of a small document, kept in its row instead of a file",
        statements=("ALTER TABLE documents ADD COLUMN stream BLOB",),
    ),
    Migration(
        version=7,
        description="audit_by_doc dropped: the page walks audit_docs by document (migration 5)",
        # IF EXISTS: for a while migration 5 itself dropped it, and databases made then have none.
        statements=("DROP INDEX IF EXISTS audit_by_doc",),
    ),
    Migration(
        version=8,
        description="doomed: documents whose rows a transaction forgot, until their file and log images are destroyed",
        statements=(
            "CREATE TABLE doomed (doc BLOB PRIMARY KEY, at INTEGER NOT NULL)",
            # A document kept again (granted again, fetched again) is no longer to destroy: were it
            # left listed, finishing an old destruction would take the new copy's file.
            "CREATE TRIGGER kept_again AFTER INSERT ON documents BEGIN DELETE FROM doomed WHERE doc = NEW.id; END",
        ),
    ),
    Migration(
        version=9,
        description="record_sets: records another node signed that a patient's node gave as part of its record",
        statements=(
            # A clinic reconciles with one patient over that patient's records only (spec 16): those the
            # patient signed, found by signer, and those its node holds and another node signed (a
            # device's revocations, [API-48]), which only where they came from tells apart.  Left
            # empty here, which is correct if incomplete: the next state answer of each patient holds
            # every revocation its node holds ([API-16]), and a sync fetches again what it misses.
            "CREATE TABLE record_sets (patient TEXT NOT NULL, id BLOB NOT NULL, PRIMARY KEY (patient, id))"
            " WITHOUT ROWID",
        ),
    ),
    Migration(
        version=10,
        description="told: the nodes a deletion's tombstone goes to, those that read, deposited or could list the document",
        statements=(
            # By node first: every state answer reads what its requester is told.  IF NOT EXISTS: for a
            # while this was migration 9, and a database made then has told and lacks record_sets.
            "CREATE TABLE IF NOT EXISTS told (node TEXT NOT NULL, doc BLOB NOT NULL, PRIMARY KEY (node, doc))"
            " WITHOUT ROWID",
            "CREATE INDEX IF NOT EXISTS told_by_doc ON told (doc)",
            "CREATE TABLE IF NOT EXISTS record_sets (patient TEXT NOT NULL, id BLOB NOT NULL,"
            " PRIMARY KEY (patient, id)) WITHOUT ROWID",
            # Tombstones of before: told, as they were then, to every clinic and to every reader.
            "INSERT OR IGNORE INTO told (doc, node) SELECT r.subject, p.did FROM records r, peers p"
            " WHERE r.typ = 'fedrecord/tombstone' AND p.role = 'clinic'",
            "INSERT OR IGNORE INTO told (doc, node) SELECT w.doc, a.reader FROM audit_docs w"
            " JOIN audit a ON a.seq = w.seq WHERE w.doc IN"
            " (SELECT subject FROM records WHERE typ = 'fedrecord/tombstone')",
        ),
    ),
    Migration(
        version=11,
        description="outbox_pending: the rows still to send, which every flush reads, apart from those delivered",
        statements=(
            # Delivered rows stay (done = 1; `fedrecord status` counts them, a refused deposit's reason is
            # read from its row): a lab's outbox holds one per deposit ever made.  A flush every
            # poll_interval, and each count and `owes`, read only these, in id order.
            "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE done = 0",
        ),
    ),
    Migration(
        version=12,
        description="documents indexes: by date for the patient's record only; the inbox, a clinic's copies apart",
        statements=(
            # Migration 4's indexes held every row, so each copy a clinic fetched went in at a random
            # place in two of them (its date, then its random id): a batch of copies dirtied a page of
            # each per copy, and the initial sync of 20,000 copies spent twice as long inserting rows as
            # with no such index.  Only the patient's page walks documents by date, and only the
            # accepted ones.  The other reads by state ("WHERE state = 'inbox'", a clinic's copies of a
            # patient) have an index each, whose rows follow in rowid order: new rows go at its end.
            # Partial, all of them: an index of every row by state would be taken for "state =
            # 'accepted'" too, and the record then sorted.  The record's indexes end with the state,
            # which their condition fixes: SQLite then answers a count or a walk of ids from the index
            # alone, without reading each row (a row may hold a small document's stream).
            "DROP INDEX IF EXISTS documents_by_state_date",
            "DROP INDEX IF EXISTS documents_by_state_category",
            "CREATE INDEX documents_accepted_by_date ON documents (date, id, state) WHERE state = 'accepted'",
            "CREATE INDEX documents_accepted_by_category ON documents (category, date, id, state)"
            " WHERE state = 'accepted'",
            "CREATE INDEX documents_inbox ON documents (state) WHERE state = 'inbox'",
            "CREATE INDEX documents_shared_by_patient ON documents (patient) WHERE state = 'shared'",
        ),
    ),
)

TABLES = (
    "meta",
    "records",
    "nonces",
    "peers",
    "invitations",
    "documents",
    "audit",
    "audit_docs",
    "connections",
    "delegations",
    "outbox",
    "view_epoch",
    "doomed",
    "record_sets",
    "told",
)
