"""Nodes: the patient's home node and clinic nodes, as adapters around the protocol core.

* :mod:`.schema` -- the node database's tables (migrations);
* :mod:`.home` -- a data directory: key file, database, document files, profile;
* :mod:`.patient` -- what the patient's node does (invitations, inbox, grants, fetches, audit);
* :mod:`.clinic` -- what a clinic node does (connect, deposit with an outbox, fetch, poll);
* :mod:`.wire` -- CBOR request and answer bodies, invitation codes;
* :mod:`.server` -- the aiohttp application serving both roles;
* :mod:`.state_feed` -- the patient's node waking its event streams when its state changes;
* :mod:`.subscriptions` -- a clinic following its patients' event streams.
"""
