-- The schema release 0.1 (main at 3f875de) creates on postgresql, dumped from its models with
-- SQLModel.metadata.create_all: the stores users have before migrations existed.

CREATE TABLE hookgate_events (
	id BIGSERIAL NOT NULL, 
	provider VARCHAR(64) NOT NULL, 
	event_id VARCHAR(255) NOT NULL, 
	event_type VARCHAR(255) NOT NULL, 
	resource_id VARCHAR(255), 
	sequence BIGINT, 
	body BYTEA NOT NULL, 
	headers TEXT NOT NULL, 
	received_at FLOAT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	last_error TEXT, 
	message_id VARCHAR(64), 
	sweep_after FLOAT, 
	lease_expires_at FLOAT, 
	updated_at FLOAT NOT NULL, 
	processed_at FLOAT, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_hookgate_events_provider_event UNIQUE (provider, event_id)
);

CREATE INDEX ix_hookgate_events_received ON hookgate_events (received_at);

CREATE INDEX ix_hookgate_events_resource ON hookgate_events (provider, resource_id, status);

CREATE INDEX ix_hookgate_events_sweep ON hookgate_events (status, sweep_after);

CREATE TABLE hookgate_resources (
	provider VARCHAR(64) NOT NULL, 
	resource_id VARCHAR(255) NOT NULL, 
	resource_type VARCHAR(64), 
	applied_sequence BIGINT, 
	applied_event_id VARCHAR(255), 
	state TEXT, 
	fetched_at FLOAT, 
	deleted BOOLEAN NOT NULL, 
	lease_token VARCHAR(64), 
	lease_expires_at FLOAT, 
	updated_at FLOAT NOT NULL, 
	PRIMARY KEY (provider, resource_id)
);

CREATE TABLE hookgate_handler_runs (
	event_pk BIGINT NOT NULL, 
	handler VARCHAR(255) NOT NULL, 
	finished_at FLOAT NOT NULL, 
	PRIMARY KEY (event_pk, handler), 
	FOREIGN KEY(event_pk) REFERENCES hookgate_events (id) ON DELETE CASCADE
);

