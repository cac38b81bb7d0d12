package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/events"
	"github.com/credbroker/credbroker/server/internal/grants"
	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// copies are the state the broker holds in memory for its hot paths (the
// token cache, the grants index, the caller keys), kept up to date from
// the stream of committed changes by a storage.Mirror, so that every
// change reaches them in commit order, whichever call made it.
type copies struct {
	store   *store.Store
	tokens  *tokens.Manager
	grants  *grants.Index
	callers *callers.Service
	events  *events.Service
	mirror  *storage.Mirror
	log     *slog.Logger
}

// load reads every record afresh into the copies and returns the revision
// to follow the changes from.
func (c *copies) load() (storage.Revision, error) {
	rev, err := c.store.Revision()
	if err != nil {
		return 0, err
	}
	all, err := c.store.All()
	if err == nil {
		_, err = c.fill(all)
	}
	return rev, err
}

// fill puts every account of all (store.All) and every caller in the
// copies, in place of what they held. It returns the names of the records
// that failed their integrity check.
func (c *copies) fill(all []store.Stored) ([]string, error) {
	c.tokens.Replace(all)
	index := make(map[string]map[string]grants.Limits, len(all))
	for _, st := range all {
		index[st.Account.ID] = accounts.Indexed(st.Account.Grants)
	}
	c.grants.Replace(index)
	tampered, err := c.callers.Load()
	if err != nil {
		return nil, err
	}
	for _, st := range all {
		if st.Account.Tampered {
			tampered = append(tampered, audit.AccountName(st.Account.ID))
		}
	}
	return tampered, nil
}

// apply makes one committed change in the copies.
func (c *copies) apply(ch storage.Change) {
	written := map[string]storage.Event{} // token states, by account id
	for _, ev := range ch.Events {
		if kind, id := store.Split(ev.Key); kind == store.KindTokens && !ev.Deleted {
			written[id] = ev
		}
	}
	for _, ev := range ch.Events {
		kind, id := store.Split(ev.Key)
		switch {
		case c.store.FollowKeyCheck(ev):
			if c.store.KeyMissing() {
				c.log.Error("another replica moved the database to a master key this one does not hold: refusing calls until it is restarted with that key")
			}
		case c.store.KeyMissing():
			// Records under a key this replica lacks would look tampered
			// with; it refuses calls until it is restarted with the key.
		case kind == store.KindAccounts && ev.Deleted:
			c.grants.Remove(id)
			c.tokens.Remove(id)
		case kind == store.KindAccounts:
			a := c.store.DecodeAccount(ev)
			if a.Tampered {
				c.noteTampered(audit.AccountName(id))
			}
			c.grants.Set(id, accounts.Indexed(a.Grants))
			c.tokens.Upsert(a, func() (store.TokenState, error) {
				if t, ok := written[id]; ok {
					ts, _ := c.store.DecodeTokenState(t)
					return ts, nil
				}
				return c.store.TokenState(id)
			})
		case kind == store.KindTokens && !ev.Deleted:
			// A token another replica (or this one) stored, or the
			// account's health it recorded.
			if ts, ok := c.store.DecodeTokenState(ev); ok {
				c.tokens.TokenStored(id, ts)
			}
		case kind == store.KindCallerKeys && ev.Deleted:
			c.callers.KeyDeleted(id)
		case kind == store.KindCallerKeys:
			k := c.store.DecodeCallerKey(ev)
			if k.Tampered {
				c.noteTampered(callers.KeyPrincipalPrefix + id)
			}
			c.callers.KeyStored(k)
		case kind == store.KindAdminPrincipals && ev.Deleted:
			c.callers.AdminDeleted(id)
		case kind == store.KindAdminPrincipals:
			c.callers.AdminStored(c.store.DecodeAdmin(ev))
		case kind == store.KindEventOutbox || kind == store.KindEvents:
			c.events.Noticed(kind)
		}
	}
}

// noteTampered makes the credential event of a record that failed its
// check as it came (someone wrote to the storage without the broker), off
// the stream of changes, which must not wait for a write.
func (c *copies) noteTampered(name string) {
	c.log.Error("a stored record failed its integrity check (it was changed outside the broker); it is not used", "resource", name)
	go func() {
		if err := c.store.NoteTampered(name); err != nil {
			c.log.Error("could not store the credential event of a record that failed its integrity check", "resource", name, "error", err)
		}
	}()
}

// syncTimeout bounds how long a change waits for the copies to hold it
// before it answers anyway.
const syncTimeout = 10 * time.Second

// synced waits until the copies hold every change this process
// committed, so that a caller sees its change on its next call. The
// change is committed already: if the copies lag, that is logged, not
// failed.
func (c *copies) synced(ctx context.Context) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), syncTimeout)
	defer cancel()
	if err := c.mirror.Wait(wctx, c.store.Committed()); err != nil {
		c.log.Warn("the in-memory state has not caught up with a change yet", "error", err)
	}
}
