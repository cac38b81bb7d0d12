// Package connect keeps connect links: one-time, short-lived links an
// admin hands to whoever holds an account's credentials, so that they can
// link that one account from the Hub without being a broker admin. A link
// is a random secret; the broker stores it only under a keyed hash of it.
// Creating, using and the expiry of an unused link are audited.
package connect

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/signin"
	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/store"
)

// Bounds of a link's lifetime, and its default.
const (
	DefaultTTL = 30 * time.Minute
	MinTTL     = time.Minute
	MaxTTL     = 7 * 24 * time.Hour
)

// keep is how long a used or expired link is kept, so that opening it
// says so rather than that it is unknown.
const keep = 7 * 24 * time.Hour

// PrincipalPrefix names a link as the principal of the calls made with it.
const PrincipalPrefix = "connectSessions/"

var (
	// ErrUnknown: no such link (mistyped, tampered with, or long gone).
	ErrUnknown = grpcerr.New(codes.NotFound, "this connect link is not valid: check that it was copied whole, or ask your admin for a new one")
	// ErrAccountExists: the link's account id is taken.
	ErrAccountExists = grpcerr.New(codes.AlreadyExists, "an account with this id exists already")
)

// UsedError and ExpiredError say when a link stopped working.
type UsedError struct{ At time.Time }

// GRPCStatus: the link cannot be used.
func (e *UsedError) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Error())
}

func (e *UsedError) Error() string {
	return "this connect link was used on " + e.At.UTC().Format("2006-01-02 15:04 UTC") + ": each link links one account, once. Ask your admin for a new one if you need it."
}

type ExpiredError struct{ At time.Time }

func (e *ExpiredError) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Error())
}

func (e *ExpiredError) Error() string {
	return "this connect link expired on " + e.At.UTC().Format("2006-01-02 15:04 UTC") + ": ask your admin for a new one."
}

// Store is what connect keeps.
type Store interface {
	Account(id string) (store.Account, error)
	CreateConnectSession(hash string, c store.ConnectSession, ev store.AuditEvent) error
	ConnectSession(hash string) (store.ConnectSession, storage.Version, error)
	UpdateConnectSession(hash string, v storage.Version, c store.ConnectSession, ev *store.AuditEvent) error
	ConnectSessions() ([]store.StoredConnectSession, error)
	DeleteConnectSession(hash string, v storage.Version) error
}

// Service creates, opens and uses links.
type Service struct {
	store Store
	keys  *keyring.Keyring
	mac   *keyring.MACKey
	now   func() time.Time
	log   *slog.Logger
}

func New(st Store, keys *keyring.Keyring, mac *keyring.MACKey, now func() time.Time, log *slog.Logger) *Service {
	return &Service{store: st, keys: keys, mac: mac, now: now, log: log}
}

// Link is a connect link, without its secret.
type Link struct {
	store.ConnectSession
	// hash and version locate it in the storage.
	hash    string
	version storage.Version
}

// Name is its resource name.
func (l Link) Name() string { return PrincipalPrefix + l.ID }

// Hash names it in the storage (a sign-in it started names it so).
func (l Link) Hash() string { return l.hash }

// NewLink is what an admin asks for; App, the provider and app (with its
// client secret) of an account whose users sign in by redirect.
type NewLink struct {
	AccountID, Provider, DisplayName, Creator string
	TTL                                       time.Duration
	App                                       *provider.Credentials
}

// secretSize is the size of a link's secret.
const secretSize = 32

// Create makes a link and returns it with its secret, which is shown only
// this once (the storage holds a keyed hash of it). ev, the audit event
// of its creation, is about the link's account.
func (s *Service) Create(in NewLink, ev store.AuditEvent) (Link, string, error) {
	b := make([]byte, secretSize)
	if _, err := rand.Read(b); err != nil {
		return Link{}, "", err
	}
	secret := base64.RawURLEncoding.EncodeToString(b)
	if _, err := s.store.Account(in.AccountID); err == nil || errors.Is(err, store.ErrIntegrity) {
		return Link{}, "", ErrAccountExists
	} else if !errors.Is(err, store.ErrNotFound) {
		return Link{}, "", err
	}
	live, err := s.List()
	if err != nil {
		return Link{}, "", err
	}
	for _, l := range live {
		if l.AccountID == in.AccountID {
			return Link{}, "", grpcerr.New(codes.FailedPrecondition, fmt.Sprintf("a connect link for this account (%s) works until %s: revoke it first",
				l.Name(), l.ExpireTime.UTC().Format("2006-01-02 15:04 UTC")))
		}
	}
	now := s.now()
	id := make([]byte, 6)
	_, _ = rand.Read(id)
	c := store.ConnectSession{
		ID: "cs-" + hex.EncodeToString(id), AccountID: in.AccountID, Provider: in.Provider, DisplayName: in.DisplayName,
		Creator: in.Creator, CreateTime: now, ExpireTime: now.Add(in.TTL),
	}
	if in.App != nil {
		app, err := signin.SealApp(s.keys, "connect-link:"+c.ID, *in.App)
		if err != nil {
			return Link{}, "", err
		}
		c.App = &app
	}
	ev.Detail = fmt.Sprintf("connect link %s%s (%s) created, valid until %s", PrincipalPrefix, c.ID, c.Provider, c.ExpireTime.UTC().Format(time.RFC3339))
	hash := s.hash(secret)
	if err := s.store.CreateConnectSession(hash, c, ev); err != nil {
		if errors.Is(err, store.ErrExists) {
			return Link{}, "", ErrAccountExists
		}
		return Link{}, "", err
	}
	return Link{ConnectSession: c, hash: hash}, secret, nil
}

// Open returns the link of a secret if it can be used now, or ErrUnknown,
// a *UsedError, an *ExpiredError, ErrRevoked or ErrInUse.
func (s *Service) Open(secret string) (Link, error) {
	if len(secret) != base64.RawURLEncoding.EncodedLen(secretSize) {
		return Link{}, ErrUnknown
	}
	return s.OpenHash(s.hash(secret))
}

// OpenHash is Open of the link stored under hash.
func (s *Service) OpenHash(hash string) (Link, error) {
	c, v, err := s.store.ConnectSession(hash)
	now := s.now()
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrIntegrity):
		return Link{}, ErrUnknown
	case err != nil:
		return Link{}, err
	case !c.UseTime.IsZero():
		return Link{}, &UsedError{At: c.UseTime}
	case !c.RevokeTime.IsZero():
		return Link{}, ErrRevoked
	case !now.Before(c.ExpireTime):
		return Link{}, &ExpiredError{At: c.ExpireTime}
	case claimed(c, now):
		return Link{}, ErrInUse
	}
	return Link{ConnectSession: c, hash: hash, version: v}, nil
}

// claimTTL is how long a use may take (proving the credentials with the
// provider) before the link counts as free again.
const claimTTL = 5 * time.Minute

// MaxFailures is how many uses the provider may refuse before the link is
// revoked: a link is not a way to try credentials.
const MaxFailures = 10

var (
	// ErrInUse: another use of the link is under way.
	ErrInUse = grpcerr.New(codes.FailedPrecondition, "this connect link is being used right now: wait for that to finish")
	// ErrRevoked: an admin revoked the link, or the provider refused too
	// many uses of it.
	ErrRevoked = grpcerr.New(codes.FailedPrecondition, "this connect link was revoked: ask your admin for a new one")
)

func claimed(c store.ConnectSession, now time.Time) bool {
	return !c.ClaimTime.IsZero() && now.Sub(c.ClaimTime) < claimTTL
}

// Claim starts a use of link l: until it is Used or Released, no other
// use starts and its expiry is not audited as unused.
func (s *Service) Claim(l Link) (Link, error) {
	l.ClaimTime = s.now()
	return l, s.change(&l, nil)
}

// Release ends a use of claimed link l that linked nothing; rejected: the
// provider refused the credentials, which counts towards MaxFailures.
func (s *Service) Release(l Link, rejected bool) error {
	l.ClaimTime = time.Time{}
	var ev *store.AuditEvent
	if rejected {
		if l.Failures++; l.Failures >= MaxFailures {
			l.RevokeTime = s.now()
			e := audit.Own(l.RevokeTime, "connect_session_revoked", "accounts/"+l.AccountID,
				fmt.Sprintf("connect link %s revoked: the provider refused %d uses of it", l.Name(), l.Failures))
			ev = &e
		}
	}
	return s.change(&l, ev)
}

// Used records that claimed link l linked its account.
func (s *Service) Used(l Link, ev store.AuditEvent) error {
	l.UseTime, l.ClaimTime = s.now(), time.Time{}
	ev.Resource, ev.Detail = "accounts/"+l.AccountID, "connect link "+l.Name()+" used"
	return s.change(&l, &ev)
}

// change stores link l over the version it was read at, with ev if set;
// ErrInUse if another replica changed it meanwhile.
func (s *Service) change(l *Link, ev *store.AuditEvent) error {
	err := s.store.UpdateConnectSession(l.hash, l.version, l.ConnectSession, ev)
	if errors.Is(err, storage.ErrConflict) {
		return ErrInUse
	}
	if err == nil {
		if _, v, rerr := s.store.ConnectSession(l.hash); rerr == nil {
			l.version = v
		}
	}
	return err
}

// List returns the links that can still be used, soonest to expire first.
func (s *Service) List() ([]Link, error) {
	all, err := s.store.ConnectSessions()
	if err != nil {
		return nil, err
	}
	now := s.now()
	var live []Link
	for _, c := range all {
		if !c.Tampered && c.UseTime.IsZero() && c.RevokeTime.IsZero() && now.Before(c.ExpireTime) {
			live = append(live, Link{ConnectSession: c.ConnectSession, hash: c.Hash, version: c.Version})
		}
	}
	slices.SortFunc(live, func(a, b Link) int { return a.ExpireTime.Compare(b.ExpireTime) })
	return live, nil
}

// ErrNotFound: no live link of that name.
var ErrNotFound = grpcerr.New(codes.NotFound, "no connect link of this name can be used: it was used, revoked or expired, or never was")

// Revoke ends live link id at once, with ev.
func (s *Service) Revoke(id string, ev store.AuditEvent) error {
	live, err := s.List()
	if err != nil {
		return err
	}
	for _, l := range live {
		if l.ID == id {
			l.RevokeTime, l.ClaimTime = s.now(), time.Time{}
			ev.Resource, ev.Detail = "accounts/"+l.AccountID, "connect link "+l.Name()+" revoked"
			return s.change(&l, &ev)
		}
	}
	return ErrNotFound
}

// hash is what a link is stored under.
func (s *Service) hash(secret string) string {
	return hex.EncodeToString(s.mac.Sum("connect-link", secret))
}

// sweepInterval is how often links are checked for expiry.
const sweepInterval = time.Minute

// Run audits the expiry of unused links and removes links kept past
// their time, every minute until ctx ends.
func (s *Service) Run(ctx context.Context) {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		if err := s.Sweep(); err != nil {
			s.log.Warn("could not check connect links for expiry", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep audits each unused link that expired (once, cluster-wide: the
// write is conditioned on the record's version) and removes the links
// kept past their time and those that fail their integrity check.
func (s *Service) Sweep() error {
	all, err := s.store.ConnectSessions()
	if err != nil {
		return err
	}
	now := s.now()
	for _, c := range all {
		switch {
		case c.Tampered, now.After(c.ExpireTime.Add(keep)):
			err = s.store.DeleteConnectSession(c.Hash, c.Version)
		case c.UseTime.IsZero() && c.RevokeTime.IsZero() && !c.ExpiryAudited && !now.Before(c.ExpireTime) && !claimed(c.ConnectSession, now):
			c.ExpiryAudited = true
			ev := audit.Own(now, "connect_session_expired", "accounts/"+c.AccountID, "connect link "+PrincipalPrefix+c.ID+" expired unused")
			if err = s.store.UpdateConnectSession(c.Hash, c.Version, c.ConnectSession, &ev); errors.Is(err, storage.ErrConflict) {
				err = nil // another replica did it, or the link was used meanwhile
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}
