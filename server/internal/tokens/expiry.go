package tokens

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/store"
)

// warnEvery is how often checkExpiry warns about one account.
const warnEvery = 24 * time.Hour

// Expiry is when an account's credentials stop working unless an admin
// adds a secret.
type Expiry struct {
	// Time is the latest expire time among the secrets the provider has
	// not rejected; zero if one of them never expires (or none is left).
	Time time.Time
	// Soon: Time is within the warning window (Config.ExpiryWarning), or
	// already past.
	Soon bool
}

// Expiry is when the account with these secrets, and the use the broker
// made of them (Status.SecretUse), runs out of credentials.
func (m *Manager) Expiry(secrets []store.Secret, use SecretUses) Expiry {
	var last time.Time
	for _, s := range secrets {
		if use.Of(s.ID).Rejected != nil {
			continue
		}
		if s.ExpireTime.IsZero() {
			return Expiry{}
		}
		if s.ExpireTime.After(last) {
			last = s.ExpireTime
		}
	}
	return Expiry{Time: last, Soon: !last.IsZero() && last.Sub(m.cfg.Now()) <= m.cfg.ExpiryWarning}
}

// expiryChecks is how many accounts one expiry check looks at, at least:
// with more than this many, a check looks at a sixtieth of them, the next
// check at the next sixtieth, so that each is looked at about once a
// minute (at the default ScanInterval) and a broker with 100,000 accounts
// does not spend a tenth of a CPU on it.
const expiryChecks = 1000

// checkExpiry warns, at most once a day per account, about every account
// whose credentials expire within the warning window, with a log line and
// an audit event; and it moves API-key accounts off keys that have expired.
// It is called by Run alone.
func (m *Manager) checkExpiry() {
	all := m.all()
	n := min(len(all), max(expiryChecks, len(all)/60))
	from := m.expiryNext % max(len(all), 1)
	m.expiryNext = from + n
	for i := range n {
		e := all[(from+i)%len(all)]
		e.mu.Lock()
		if e.apiKey {
			m.replaceExpiredKey(e)
		}
		now := m.cfg.Now()
		exp := m.Expiry(e.secrets, e.status.SecretUse)
		warn := !e.removed && exp.Soon && exp.Time.After(now) && now.Sub(e.expiryWarned) >= warnEvery
		if warn {
			e.expiryWarned = now
		}
		var expired []store.Secret
		for _, sec := range e.secrets {
			if !e.removed && !sec.ExpireTime.IsZero() && !sec.ExpireTime.After(now) && !e.readSetbacks().expiredNoted[sec.ID] {
				sb := e.writeSetbacks()
				if sb.expiredNoted == nil {
					sb.expiredNoted = map[string]bool{}
				}
				sb.expiredNoted[sec.ID] = true
				expired = append(expired, sec)
			}
		}
		e.mu.Unlock()
		if warn {
			m.warnExpiry(e.id, exp.Time, now)
		}
		if len(expired) > 0 {
			m.noteExpired(e, expired, now)
		}
	}
}

// warnExpiry logs and audits that an account's credentials expire at
// expire, and stores when it did so that a restart does not warn again
// within the day.
func (m *Manager) warnExpiry(id string, expire, now time.Time) {
	left := expire.Sub(now)
	hours := int(left.Hours())
	at := expire.UTC().Format(time.RFC3339)
	m.cfg.Logger.Warn("the account's secrets expire soon: add a new secret (AddAccountSecret)",
		"account", id, "expire_time", at, "days_left", int(math.Ceil(left.Hours()/24)))
	ev := audit.Own(now, "secret_expiring", audit.AccountName(id), fmt.Sprintf("secrets expire %s (in %dd %dh): add a new secret", at, hours/24, hours%24))
	err := m.store.UpdateTokenState(id, func(ts *store.TokenState, _ []byte) error { ts.ExpiryWarned = now; return nil }, &ev)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		m.cfg.Logger.Error("could not record the expiry warning", "account", id, "error", err)
	}
}

// errNoted: the secrets' expiry was noted already (by this process before
// a restart, or by another replica): nothing to store.
var errNoted = errors.New("noted already")

// noteExpired stores that secrets of e's account have passed their
// expire time, with an audit event, once: the store makes a secret_expired
// event of each secret it had not noted. One it could not store is noted
// at the next check.
func (m *Manager) noteExpired(e *entry, secrets []store.Secret, now time.Time) {
	id := e.id
	for _, sec := range secrets {
		ev := audit.Own(now, "secret_expired", audit.AccountName(id), fmt.Sprintf("secret %s expired %s", sec.ID, sec.ExpireTime.UTC().Format(time.RFC3339)))
		err := m.store.UpdateTokenState(id, func(ts *store.TokenState, _ []byte) error {
			if ts.ExpiredNoted[sec.ID] {
				return errNoted
			}
			if ts.ExpiredNoted == nil {
				ts.ExpiredNoted = map[string]bool{}
			}
			ts.ExpiredNoted[sec.ID] = true
			return nil
		}, &ev)
		if err != nil && !errors.Is(err, errNoted) && !errors.Is(err, store.ErrNotFound) {
			m.cfg.Logger.Error("could not record that a secret expired", "account", id, "secret", sec.ID, "error", err)
			e.mu.Lock()
			delete(e.writeSetbacks().expiredNoted, sec.ID)
			e.mu.Unlock()
		}
	}
}
