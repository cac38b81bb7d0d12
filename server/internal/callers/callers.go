// Package callers keeps who may call the broker: caller keys, of which only
// a keyed hash is stored, and the client-certificate principals that hold
// the admin role. It answers "whose key is this?" from memory, so a
// revocation takes effect on the very next call.
package callers

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"math"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/store"
)

// Role is what a caller key may do: everything (admin), or get tokens
// and call APIs as its grants allow (caller).
type Role string

// Roles of caller keys, as stored.
const (
	RoleAdmin  Role = "admin"
	RoleCaller Role = "caller"
)

const (
	// KeyPrincipalPrefix starts the principal of every caller key,
	// "callerKeys/{key_id}". No certificate principal may start with it.
	KeyPrincipalPrefix = "callerKeys/"
	// keyPrefix starts every key, so that leaked keys are easy to find by
	// secret scanners.
	keyPrefix = "cbk_"
	// keyBytes of randomness: 256 bits.
	keyBytes = 32
	// hashPurpose binds the keyed hashes of caller keys to this use.
	hashPurpose = "caller-key"
)

var (
	ErrNotFound  = grpcerr.New(codes.NotFound, "caller key not found")
	ErrExists    = grpcerr.New(codes.AlreadyExists, "a caller key with this key_id exists (revoked or not): choose another key_id, or delete the old key first (DeleteCallerKey)")
	ErrNotAdmin  = grpcerr.New(codes.NotFound, "not an admin principal")
	ErrLastAdmin = grpcerr.WithReason(codes.FailedPrecondition, credbrokerv1.ErrorReason_LAST_ADMIN,
		"this is the last admin identity: create another admin caller key or add an admin principal first")
	ErrUnknownKey   = errors.New("unknown caller key")
	ErrKeyRevoked   = errors.New("caller key revoked")
	ErrKeyExpired   = errors.New("caller key expired")
	ErrKeyMalformed = errors.New(`malformed caller key: send "authorization: Bearer cbk_..."`)
)

// Key is a caller key as admins see it: never the key, nor its hash.
type Key struct {
	ID          string
	Description string
	Role        Role
	CreateTime  time.Time
	ExpireTime  time.Time // zero if never
	RevokeTime  time.Time // zero if not revoked
	Creator     string
	// Tampered: the stored key failed its integrity check; only ID is set.
	Tampered bool
}

// keyOf maps a stored caller key to what admins see of it.
func keyOf(r store.CallerKey) Key {
	return Key{
		ID: r.ID, Description: r.Description, Role: Role(r.Role), CreateTime: r.CreateTime,
		ExpireTime: r.ExpireTime, RevokeTime: r.RevokeTime, Creator: r.Creator, Tampered: r.Tampered,
	}
}

// Expired reports whether the key has expired by now.
func (k Key) Expired(now time.Time) bool { return !k.ExpireTime.IsZero() && !now.Before(k.ExpireTime) }

// Identity is a proven caller.
type Identity struct {
	Principal string
	Admin     bool
}

// Store is what callers needs of the storage: its records of caller keys
// and admin principals, each change committed with its audit event.
// *store.Store provides it on any storage engine.
type Store interface {
	Bootstrapped() (bool, error)
	Bootstrap(k *store.CallerKey, admin *store.AdminPrincipal, ev store.AuditEvent) error
	CreateCallerKey(k store.CallerKey, ev store.AuditEvent) error
	UpdateCallerKey(id string, change func(*store.CallerKey), guard store.AdminGuard, ev store.AuditEvent) (store.CallerKey, error)
	CallerKeys(after string, limit int) ([]store.CallerKey, error)
	DeleteCallerKey(id string, hash []byte, guard store.AdminGuard, ev store.AuditEvent) error
	KeyHashRetired(hash []byte) (bool, error)
	PutAdmin(a store.AdminPrincipal, ev store.AuditEvent) error
	DeleteAdmin(principal string, guard store.AdminGuard, ev store.AuditEvent) error
	Admins(after string, limit int) ([]store.AdminPrincipal, error)
}

// Service manages callers. Its copies of the keys and admin principals
// learn of changes from the stream of committed changes (see
// storage.Mirror: Load, KeyStored, KeyDeleted, AdminStored, AdminDeleted); each
// change returns once they hold it.
type Service struct {
	store Store
	mac   *keyring.MACKey
	now   func() time.Time
	// synced waits until the copies hold every commit made so far.
	synced func(context.Context)

	// change serializes changes, so that the last-admin check and the
	// write that depends on it happen as one step.
	change sync.Mutex
	// principalsProve: this broker takes client certificates, so an admin
	// principal is an admin someone can act as (see keepAnAdmin).
	principalsProve bool

	mu     sync.RWMutex
	byHash map[string]store.CallerKey // keyed hash (as a string) -> key record
	byID   map[string]store.CallerKey
	// admins maps each stored admin principal to whether it holds the
	// role: false if its record failed its integrity check.
	admins map[string]bool
}

// New returns a Service; fill it with Load.
func New(st Store, mac *keyring.MACKey, now func() time.Time, synced func(context.Context)) *Service {
	return &Service{store: st, mac: mac, now: now, synced: synced, byHash: map[string]store.CallerKey{}, byID: map[string]store.CallerKey{}, admins: map[string]bool{}}
}

// AdminPrincipalsProve says whether this broker takes client certificates
// (it has client CAs): without, no admin principal is an admin anyone can
// act as, and none keeps the last admin key from being removed.
func (s *Service) AdminPrincipalsProve(yes bool) { s.principalsProve = yes }

// Load reads every caller key and admin principal, in place of those held.
// It returns the names of those whose stored records failed their
// integrity check: such a key authenticates no one, and such a principal
// is no admin.
func (s *Service) Load() (tampered []string, err error) {
	keys, err := s.store.CallerKeys("", math.MaxInt)
	if err != nil {
		return nil, err
	}
	admins, err := s.store.Admins("", math.MaxInt)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.byHash)
	clear(s.byID)
	clear(s.admins)
	for _, k := range keys {
		s.putLocked(k)
		if k.Tampered {
			tampered = append(tampered, KeyPrincipalPrefix+k.ID)
		}
	}
	for _, a := range admins {
		s.admins[a.Principal] = !a.Tampered
		if a.Tampered {
			tampered = append(tampered, "adminPrincipals/"+a.Principal)
		}
	}
	return tampered, nil
}

// KeyStored takes note of a caller key as a committed change stored it.
func (s *Service) KeyStored(k store.CallerKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putLocked(k)
}

// KeyDeleted takes note of a caller key a committed change deleted.
func (s *Service) KeyDeleted(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.byID[id]; ok {
		delete(s.byHash, string(old.Hash))
		delete(s.byID, id)
	}
}

// AdminStored takes note of an admin principal a committed change stored.
func (s *Service) AdminStored(a store.AdminPrincipal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.admins[a.Principal] = !a.Tampered
}

// AdminDeleted takes note of an admin principal a committed change deleted.
func (s *Service) AdminDeleted(principal string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.admins, principal)
}

func (s *Service) putLocked(k store.CallerKey) {
	if old, ok := s.byID[k.ID]; ok && string(old.Hash) != string(k.Hash) {
		delete(s.byHash, string(old.Hash))
	}
	if !k.Tampered { // its stored hash cannot be trusted
		s.byHash[string(k.Hash)] = k
	}
	s.byID[k.ID] = k
}

// AuthenticateKey returns the identity of a caller key. For a revoked or
// expired key it returns the key's identity too, with the error, so that
// the audit trail names the key that was refused.
func (s *Service) AuthenticateKey(key string) (Identity, error) {
	if !strings.HasPrefix(key, keyPrefix) {
		return Identity{}, ErrKeyMalformed
	}
	hash := s.mac.Sum(hashPurpose, key)
	s.mu.RLock()
	k, ok := s.byHash[string(hash)]
	s.mu.RUnlock()
	if !ok {
		return Identity{}, ErrUnknownKey
	}
	return s.identity(k)
}

// PrincipalIdentity is the identity of a principal that proved itself
// before (signed in to the Hub) as it stands now: a caller key's as
// AuthenticateKey would have it (revoked and expired keys refused), a
// client-certificate principal's as CertificateIdentity.
func (s *Service) PrincipalIdentity(principal string) (Identity, error) {
	id, isKey := strings.CutPrefix(principal, KeyPrincipalPrefix)
	if !isKey {
		return s.CertificateIdentity(principal), nil
	}
	s.mu.RLock()
	k, ok := s.byID[id]
	s.mu.RUnlock()
	if !ok || k.Tampered {
		return Identity{}, ErrUnknownKey
	}
	return s.identity(k)
}

// identity is a stored key's identity, or why it authenticates no one.
func (s *Service) identity(k store.CallerKey) (Identity, error) {
	id := Identity{Principal: KeyPrincipalPrefix + k.ID, Admin: Role(k.Role) == RoleAdmin}
	switch {
	case !k.RevokeTime.IsZero():
		return Identity{Principal: id.Principal}, ErrKeyRevoked
	case expired(k, s.now()):
		return Identity{Principal: id.Principal}, ErrKeyExpired
	}
	return id, nil
}

// CertificateIdentity returns the identity of a client-certificate principal.
func (s *Service) CertificateIdentity(principal string) Identity {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return Identity{Principal: principal, Admin: s.admins[principal]}
}

func expired(k store.CallerKey, now time.Time) bool {
	return !k.ExpireTime.IsZero() && !now.Before(k.ExpireTime)
}

// NewKey is a validated request for a caller key.
type NewKey struct {
	ID          string
	Description string
	Role        Role
	ExpireTime  time.Time
	Creator     string
}

// Create makes and stores a caller key, recording ev with it, and returns
// the record and the key, which is never seen again.
func (s *Service) Create(ctx context.Context, in NewKey, ev store.AuditEvent) (Key, secret.String, error) {
	key, err := newKey()
	if err != nil {
		return Key{}, secret.String{}, err
	}
	k := store.CallerKey{
		ID: in.ID, Description: in.Description, Role: string(in.Role), Hash: s.mac.Sum(hashPurpose, key),
		CreateTime: s.now(), ExpireTime: in.ExpireTime, Creator: in.Creator,
	}
	s.change.Lock()
	defer s.change.Unlock()
	if err := s.store.CreateCallerKey(k, ev); err != nil {
		if errors.Is(err, store.ErrExists) {
			return Key{}, secret.String{}, ErrExists
		}
		return Key{}, secret.String{}, err
	}
	s.synced(ctx)
	return keyOf(k), secret.New(key), nil
}

// Revoke revokes a caller key, recording ev with it. Revoking a revoked key
// returns it unchanged and records nothing.
func (s *Service) Revoke(ctx context.Context, id string, ev store.AuditEvent) (Key, bool, error) {
	s.change.Lock()
	defer s.change.Unlock()
	k, guard, err := s.removing(id)
	if err != nil {
		return Key{}, false, err
	}
	if !k.RevokeTime.IsZero() {
		return keyOf(k), false, nil
	}
	now := s.now()
	k, err = s.store.UpdateCallerKey(id, func(k *store.CallerKey) {
		if k.Tampered { // replaced by a clean record that authenticates no one
			*k = store.CallerKey{ID: id, Role: string(RoleCaller), CreateTime: now, Creator: ev.Principal,
				Description: "revoked after its stored record failed its integrity check"}
		}
		k.RevokeTime = now
	}, guard, ev)
	if err != nil {
		return Key{}, false, err
	}
	s.synced(ctx)
	return keyOf(k), true, nil
}

// Delete removes a caller key for good, recording ev with it; its id may
// be used again. Deleting the last usable admin key is refused.
func (s *Service) Delete(ctx context.Context, id string, ev store.AuditEvent) error {
	s.change.Lock()
	defer s.change.Unlock()
	k, guard, err := s.removing(id)
	if err != nil {
		return err
	}
	if err := s.store.DeleteCallerKey(id, k.Hash, guard, ev); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return ErrNotFound
		}
		return err
	}
	s.synced(ctx)
	return nil
}

// removing returns the key id that a change is about to revoke or delete,
// with the guard that change must pass: keepAnAdmin, if the key is a
// usable admin key. s.change must be held.
func (s *Service) removing(id string) (store.CallerKey, store.AdminGuard, error) {
	s.mu.RLock()
	k, ok := s.byID[id]
	s.mu.RUnlock()
	if !ok {
		return store.CallerKey{}, nil, ErrNotFound
	}
	if Role(k.Role) == RoleAdmin && k.RevokeTime.IsZero() && !expired(k, s.now()) {
		return k, s.keepAnAdmin(id, ""), nil
	}
	return k, nil, nil
}

// keepAnAdmin refuses the removal of an admin identity (the key keyID or
// the principal principal) that would leave no usable admin key or admin
// principal (one only if client certificates can prove it). The store judges it on fresh reads, one removal after
// another across replicas.
func (s *Service) keepAnAdmin(keyID, principal string) store.AdminGuard {
	return func(keys []store.CallerKey, admins []store.AdminPrincipal) error {
		now := s.now()
		for _, a := range admins {
			if !a.Tampered && a.Principal != principal && s.principalsProve {
				return nil
			}
		}
		for _, k := range keys {
			if k.ID != keyID && !k.Tampered && Role(k.Role) == RoleAdmin && k.RevokeTime.IsZero() && !expired(k, now) {
				return nil
			}
		}
		return ErrLastAdmin
	}
}

// Exists says whether a caller key with this id was ever created.
func (s *Service) Exists(id string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.byID[id]
	return ok
}

// List returns up to limit caller keys after the given id, in id order, and
// whether more follow.
func (s *Service) List(after string, limit int) ([]Key, bool, error) {
	records, err := s.store.CallerKeys(after, limit+1)
	if err != nil {
		return nil, false, err
	}
	more := len(records) > limit
	keys := make([]Key, 0, min(len(records), limit))
	for _, r := range records[:min(len(records), limit)] {
		keys = append(keys, keyOf(r))
	}
	return keys, more, nil
}

// AddAdmin gives a certificate principal the admin role, recording ev with
// it. It reports false, recording nothing, if the principal is an admin already.
func (s *Service) AddAdmin(ctx context.Context, principal, creator string, ev store.AuditEvent) (bool, error) {
	s.change.Lock()
	defer s.change.Unlock()
	if s.CertificateIdentity(principal).Admin {
		return false, nil
	}
	if err := s.store.PutAdmin(store.AdminPrincipal{Principal: principal, CreateTime: s.now(), Creator: creator}, ev); err != nil {
		return false, err
	}
	s.synced(ctx)
	return true, nil
}

// RemoveAdmin takes the admin role from a certificate principal, recording
// ev with the change.
func (s *Service) RemoveAdmin(ctx context.Context, principal string, ev store.AuditEvent) error {
	s.change.Lock()
	defer s.change.Unlock()
	s.mu.RLock()
	admin, stored := s.admins[principal]
	s.mu.RUnlock()
	if !stored {
		return ErrNotAdmin
	}
	var guard store.AdminGuard
	if admin {
		guard = s.keepAnAdmin("", principal)
	}
	if err := s.store.DeleteAdmin(principal, guard, ev); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return ErrNotAdmin // removed meanwhile
		}
		return err
	}
	s.synced(ctx)
	return nil
}

// Admins returns the admin principals, sorted, without those whose
// record failed its integrity check (they hold no role).
func (s *Service) Admins() ([]string, error) {
	list, err := s.store.Admins("", math.MaxInt)
	var out []string
	for _, a := range list {
		if !a.Tampered {
			out = append(out, a.Principal)
		}
	}
	return out, err
}

// BootstrapKeyID is the id of the admin key made on first start.
const BootstrapKeyID = "bootstrap-admin"

// Bootstrap creates the first admin on a store's first start: the
// principal adminPrincipal if given, else an admin caller key (chosenKey
// if given, one the operator made, else a new one), which it returns. On any later start it does nothing and returns no key, as when
// another replica bootstraps the store first. It runs before Load.
func (s *Service) Bootstrap(adminPrincipal string, chosenKey secret.String, ev store.AuditEvent) (secret.String, error) {
	s.change.Lock()
	defer s.change.Unlock()
	done, err := s.store.Bootstrapped()
	if err != nil || done {
		return secret.String{}, err
	}
	now := s.now()
	if adminPrincipal != "" {
		a := store.AdminPrincipal{Principal: adminPrincipal, CreateTime: now, Creator: ev.Principal}
		ev.Resource, ev.Detail = "", "admin principal "+adminPrincipal
		return secret.String{}, ignoreBootstrapped(s.store.Bootstrap(nil, &a, ev))
	}
	key := chosenKey.Reveal()
	if key == "" {
		if key, err = newKey(); err != nil {
			return secret.String{}, err
		}
	} else if err := CheckKeyFormat(key); err != nil {
		return secret.String{}, err
	}
	k := store.CallerKey{
		ID: BootstrapKeyID, Description: "created at first start; revoke it once you have made your own admin key",
		Role: string(RoleAdmin), Hash: s.mac.Sum(hashPurpose, key), CreateTime: now, Creator: ev.Principal,
	}
	ev.Resource, ev.Detail = KeyPrincipalPrefix+k.ID, "admin caller key"
	if err := s.store.Bootstrap(&k, nil, ev); err != nil {
		return secret.String{}, ignoreBootstrapped(err)
	}
	return secret.New(key), nil
}

// ErrKeyUsedBefore refuses a recovery key that was a caller key already.
var ErrKeyUsedBefore = errors.New("the key in --bootstrap-admin-key-file was a caller key before (revoked, expired or deleted now): put a new key in it")

// Recover makes chosenKey, a key the operator made, an admin caller key
// when no usable admin identity is left (every admin key revoked or
// expired, and no admin principal a certificate can prove), recording ev:
// whoever holds the master key and starts the broker is never locked out
// for good. It returns the new key's id, or "" and whether an admin is
// left when it made none (there is one, or no key was given).
func (s *Service) Recover(chosenKey secret.String, ev store.AuditEvent) (id string, adminLeft bool, err error) {
	s.change.Lock()
	defer s.change.Unlock()
	keys, err := s.store.CallerKeys("", math.MaxInt)
	if err != nil {
		return "", false, err
	}
	admins, err := s.store.Admins("", math.MaxInt)
	if err != nil {
		return "", false, err
	}
	if s.keepAnAdmin("", "")(keys, admins) == nil {
		return "", true, nil
	}
	key := chosenKey.Reveal()
	if key == "" {
		return "", false, nil
	}
	if err := CheckKeyFormat(key); err != nil {
		return "", false, err
	}
	hash := s.mac.Sum(hashPurpose, key)
	retired, err := s.store.KeyHashRetired(hash)
	if err != nil {
		return "", false, err
	}
	for _, k := range keys {
		retired = retired || string(k.Hash) == string(hash)
	}
	if retired {
		return "", false, ErrKeyUsedBefore
	}
	// Named by the key, so that replicas recovering at once with the same
	// file make one key.
	now := s.now()
	k := store.CallerKey{
		ID: "recovered-admin-" + hex.EncodeToString(hash[:6]), Role: string(RoleAdmin), Hash: hash, CreateTime: now, Creator: ev.Principal,
		Description: "made at start from --bootstrap-admin-key-file, when no usable admin was left",
	}
	ev.Resource, ev.Detail = KeyPrincipalPrefix+k.ID, "admin caller key: no usable admin identity was left"
	if err := s.store.CreateCallerKey(k, ev); errors.Is(err, store.ErrExists) {
		return "", true, nil // another replica made it meanwhile
	} else if err != nil {
		return "", false, err
	}
	return k.ID, false, nil
}

// ignoreBootstrapped is err, unless another replica bootstrapped the store
// meanwhile.
func ignoreBootstrapped(err error) error {
	if errors.Is(err, store.ErrBootstrapped) {
		return nil
	}
	return err
}

// keyFormat is what newKey makes.
var keyFormat = regexp.MustCompile(`^cbk_[A-Za-z0-9_-]{43}$`)

// CheckKeyFormat tells whether key is shaped like the keys the broker
// makes: "cbk_" and 32 random bytes in unpadded base64url. Keys an
// operator makes must be as strong.
func CheckKeyFormat(key string) error {
	if !keyFormat.MatchString(key) {
		return errors.New(`a caller key is "cbk_" and 32 random bytes in unpadded base64url (43 characters), e.g. echo "cbk_$(head -c 32 /dev/urandom | basenc --base64url | tr -d =)"`)
	}
	return nil
}

func newKey() (string, error) {
	b := make([]byte, keyBytes)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return keyPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// NewID makes a key id for callers that do not choose one.
func NewID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "ck-" + hex.EncodeToString(b)
}
