package store

import (
	"bytes"
	"errors"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// Webhook is an endpoint credential events are delivered to, as stored.
type Webhook struct {
	Version int    `json:"v"`
	ID      string `json:"id"`
	URL     string `json:"url"`
	// Kinds and Accounts (ids) filter the events; empty: all.
	Kinds       []string `json:"kinds,omitempty"`
	Accounts    []string `json:"accounts,omitempty"`
	Description string   `json:"description,omitempty"`
	// Nonce makes, with the MAC key, the signing secret (see package
	// webhooks): not secret itself, and nothing to re-seal when the master
	// key is rotated.
	Nonce      []byte    `json:"nonce"`
	CreateTime time.Time `json:"create_time"`
	Creator    string    `json:"creator"`

	// Tampered: the stored record failed its integrity check; only ID is
	// set. Never stored.
	Tampered bool `json:"-"`
}

func (w *Webhook) version() int { return w.Version }

func (w *Webhook) markTampered(id string) { *w = Webhook{ID: id, Tampered: true} }

// WebhookDelivery is how the deliveries to a webhook are going.
type WebhookDelivery struct {
	Version int `json:"v"`
	// Cursor is the sequence number of the last event delivered, passed
	// over (not matching the filters) or given up; LastEventID the id of
	// the last one delivered or given up.
	Cursor      uint64 `json:"cursor"`
	LastEventID string `json:"last_event_id,omitempty"`
	// Failures of the event after Cursor being retried, since FailingSince;
	// NextAttempt is when it is tried again.
	Failures     int       `json:"failures,omitempty"`
	FailingSince time.Time `json:"failing_since,omitzero"`
	NextAttempt  time.Time `json:"next_attempt,omitzero"`
	// Attempts are the last attempts, newest first.
	Attempts []WebhookAttempt `json:"attempts,omitempty"`
}

func (d *WebhookDelivery) version() int { return d.Version }

// WebhookAttempt is one POST of an event to a webhook.
type WebhookAttempt struct {
	Time     time.Time     `json:"time"`
	EventID  string        `json:"event_id"`
	Kind     string        `json:"kind"`
	Status   int           `json:"status,omitempty"`
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration"`
	GaveUp   bool          `json:"gave_up,omitempty"`
}

// CreateWebhook stores a new webhook, whose deliveries start after the
// event at sequence number cursor, with the audit event of the change, or
// returns ErrExists.
func (s *Store) CreateWebhook(w Webhook, cursor uint64, ev AuditEvent) error {
	w.Version = recordVersion
	d := WebhookDelivery{Version: recordVersion, Cursor: cursor}
	err := s.commit(func() (txn, error) {
		return ops(conds(storage.VersionIs(key(webhooksBucket, w.ID), storage.Absent)),
			s.put(webhooksBucket, w.ID, w), s.put(webhookDeliveriesBucket, w.ID, d), s.appendAudit(ev))
	})
	if errors.Is(err, storage.ErrConflict) {
		return ErrExists
	}
	return err
}

// Webhook returns a webhook, ErrNotFound, or ErrIntegrity.
func (s *Store) Webhook(id string) (Webhook, error) {
	var w Webhook
	_, err := s.read(webhooksBucket, id, &w)
	return w, err
}

// Webhooks returns up to limit webhooks whose id sorts after the given
// one, in id order; those whose record fails its check are marked
// Tampered.
func (s *Store) Webhooks(after string, limit int) ([]Webhook, error) {
	return page[Webhook](s, webhooksBucket, after, limit)
}

// WebhookDelivery returns how a webhook's deliveries are going (the zero
// WebhookDelivery if the webhook is gone), or ErrIntegrity.
func (s *Store) WebhookDelivery(id string) (WebhookDelivery, error) {
	var d WebhookDelivery
	_, err := s.read(webhookDeliveriesBucket, id, &d)
	if errors.Is(err, ErrNotFound) {
		return WebhookDelivery{}, nil
	}
	return d, err
}

// SaveWebhookDelivery stores how webhook w's deliveries are going, while
// held holds (the deliverer's lock) and w exists: else it returns
// ErrNotFound (w was deleted, even if another webhook has its id now) or
// storage.ErrConflict (the lock lost).
func (s *Store) SaveWebhookDelivery(w Webhook, d WebhookDelivery, held []storage.Cond) error {
	d.Version = recordVersion
	return s.commit(func() (txn, error) {
		var now Webhook
		version, err := s.read(webhooksBucket, w.ID, &now)
		if err != nil {
			return txn{}, err
		}
		if !bytes.Equal(now.Nonce, w.Nonce) {
			return txn{}, ErrNotFound
		}
		return ops(append(conds(storage.VersionIs(key(webhooksBucket, w.ID), version)), held...), s.put(webhookDeliveriesBucket, w.ID, d))
	})
}

// DeleteWebhook removes a webhook and its deliveries' state, with the
// audit event of the change, or returns ErrNotFound.
func (s *Store) DeleteWebhook(id string, ev AuditEvent) error {
	return s.commit(func() (txn, error) {
		r, err := s.db.Get(ctx, key(webhooksBucket, id))
		if err != nil {
			return txn{}, err
		}
		return ops(conds(storage.VersionIs(r.Key, r.Version)),
			opOf(storage.Delete(r.Key)), opOf(storage.Delete(key(webhookDeliveriesBucket, id))), s.appendAudit(ev))
	})
}
