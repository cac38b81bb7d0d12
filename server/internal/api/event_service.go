package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/events"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

type eventService struct {
	credbrokerv1.UnimplementedEventServiceServer
	events  *events.Service
	callers *callers.Service
	// logID tells this broker's resume tokens from another's (the
	// database's id, shortened).
	logID []byte
	errs  errorMapper
}

// maxWatchedAccounts bounds WatchEventsRequest.accounts.
const maxWatchedAccounts = 100

func (s *eventService) WatchEvents(req *credbrokerv1.WatchEventsRequest, stream grpc.ServerStreamingServer[credbrokerv1.WatchEventsResponse]) error {
	ctx := stream.Context()
	c := gate.CallFrom(ctx)
	match, err := eventFilter(req)
	if err != nil {
		return err
	}
	after, err := s.resumeAfter(ctx, req.GetResumeToken())
	if err != nil {
		return err
	}
	// The headers say the watch is in place: every change from now on
	// reaches it.
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	err = s.events.Watch(ctx, after, func(evs []store.Event) (bool, error) {
		// A key revoked (or expired) since the watch began ends it; an
		// admin who lost the role sees what a caller sees.
		id, err := s.callers.PrincipalIdentity(c.Principal)
		if err != nil {
			return false, status.Error(codes.Unauthenticated, err.Error())
		}
		if evs == nil {
			return true, stream.Send(&credbrokerv1.WatchEventsResponse{ResumeToken: s.resumeToken(after)})
		}
		sent := false
		for _, e := range evs {
			after = e.Seq
			if !match(e, id) {
				continue
			}
			ev := eventProto(e)
			if !id.Admin {
				callerView(ev)
			}
			if err := stream.Send(&credbrokerv1.WatchEventsResponse{Event: ev, ResumeToken: s.resumeToken(e.Seq)}); err != nil {
				return sent, err
			}
			sent = true
		}
		return sent, nil
	})
	switch {
	case errors.Is(err, events.ErrExpired):
		return grpcerr.Status(codes.FailedPrecondition, "resume_token: the events after it are older than the broker keeps (--event-retention); watch again without one, and read the current state from the API",
			grpcerr.Info(credbrokerv1.ErrorReason_EVENTS_EXPIRED, nil)).Err()
	case errors.Is(err, events.ErrDraining):
		return status.Error(codes.Unavailable, "the broker is shutting down; watch again from the last resume_token (on another replica)")
	case errors.Is(err, events.ErrAhead):
		return invalidArgument("resume_token", "is not from this broker's events")
	case err != nil:
		return s.errs.toStatus(ctx, err)
	}
	return nil
}

// eventFilter checks a request's filters and returns what a caller may see
// of what it asked for: admins every event, others those of the accounts
// that granted them when the change was made.
func eventFilter(req *credbrokerv1.WatchEventsRequest) (func(store.Event, callers.Identity) bool, error) {
	kinds, accounts, err := parseEventFilters(req.GetKinds(), req.GetAccounts())
	if err != nil {
		return nil, err
	}
	return func(e store.Event, id callers.Identity) bool {
		return store.EventMatches(e, kinds, accounts) && (id.Admin || e.Account != "" && slices.Contains(e.Grantees, id.Principal))
	}, nil
}

// parseEventFilters checks filters of event kinds and account names and
// returns them as stored events name them.
func parseEventFilters(kinds []credbrokerv1.EventKind, accountNames []string) (kindNames, accounts []string, err error) {
	if len(accountNames) > maxWatchedAccounts {
		return nil, nil, invalidArgument("accounts", fmt.Sprintf("at most %d", maxWatchedAccounts))
	}
	for _, name := range accountNames {
		id, err := parseName("accounts", name)
		if err != nil {
			return nil, nil, err
		}
		accounts = append(accounts, id)
	}
	for _, k := range kinds {
		kind, ok := eventKindName[k]
		if !ok {
			return nil, nil, invalidArgument("kinds", fmt.Sprintf("%d is not an event kind", k))
		}
		kindNames = append(kindNames, kind)
	}
	return kindNames, accounts, nil
}

// callerView is what a caller that is not an admin sees of an event, as
// of an account through GetToken: the provider's error code, not its
// description or the broker's message (which may quote it); not the
// secret's id (a fingerprint, which confirms a guessed secret); not which
// admin made the change.
func callerView(e *credbrokerv1.Event) {
	if f := e.GetLastError(); f != nil {
		f.Message, f.ProviderErrorDescription = "", ""
	}
	if sec := e.GetSecret(); sec != nil {
		sec.SecretId = ""
	}
	if e.Principal != store.BrokerPrincipal {
		e.Principal = ""
	}
}

// A resume token is the log's id and an event's sequence number.
func (s *eventService) resumeToken(seq uint64) string {
	return base64.RawURLEncoding.EncodeToString(binary.BigEndian.AppendUint64(slices.Clone(s.logID), seq))
}

// resumeAfter is the sequence number a request resumes after: the
// newest, without a token.
func (s *eventService) resumeAfter(ctx context.Context, token string) (uint64, error) {
	if token == "" {
		newest, err := s.events.Newest()
		if err != nil {
			return 0, s.errs.toStatus(ctx, err)
		}
		return newest, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) != len(s.logID)+8 || !bytes.Equal(b[:len(s.logID)], s.logID) {
		return 0, invalidArgument("resume_token", "is not from this broker's events")
	}
	return binary.BigEndian.Uint64(b[len(s.logID):]), nil
}

// EventLogID is what resume tokens carry of a database's id.
func EventLogID(databaseID []byte) []byte { return databaseID[:min(len(databaseID), 8)] }

var (
	eventKindName = map[credbrokerv1.EventKind]string{
		credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED:         store.EventAccountLinked,
		credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_DELETED:        store.EventAccountDeleted,
		credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_STATE_CHANGED:  store.EventAccountStateChanged,
		credbrokerv1.EventKind_EVENT_KIND_SECRET_ADDED:           store.EventSecretAdded,
		credbrokerv1.EventKind_EVENT_KIND_SECRET_REMOVED:         store.EventSecretRemoved,
		credbrokerv1.EventKind_EVENT_KIND_SECRET_REJECTED:        store.EventSecretRejected,
		credbrokerv1.EventKind_EVENT_KIND_SECRET_EXPIRING:        store.EventSecretExpiring,
		credbrokerv1.EventKind_EVENT_KIND_SECRET_EXPIRED:         store.EventSecretExpired,
		credbrokerv1.EventKind_EVENT_KIND_CALLER_KEY_CREATED:     store.EventCallerKeyCreated,
		credbrokerv1.EventKind_EVENT_KIND_CALLER_KEY_REVOKED:     store.EventCallerKeyRevoked,
		credbrokerv1.EventKind_EVENT_KIND_INTEGRITY_CHECK_FAILED: store.EventIntegrityCheckFailed,
	}
	eventKindProto = func() map[string]credbrokerv1.EventKind {
		m := map[string]credbrokerv1.EventKind{}
		for k, name := range eventKindName {
			m[name] = k
		}
		return m
	}()
)

// eventProto shows an event.
func eventProto(e store.Event) *credbrokerv1.Event {
	p := &credbrokerv1.Event{
		Id:                    e.ID,
		Kind:                  eventKindProto[e.Kind],
		Time:                  timestamp(e.Time),
		Principal:             e.Principal,
		OldState:              stateProto[tokens.State(e.OldState)],
		NewState:              stateProto[tokens.State(e.NewState)],
		LastError:             accountError(tokens.FailureOf(e.Failure)),
		CredentialsExpireTime: timestamp(e.ExpireTime),
	}
	if e.Account != "" {
		p.Account = accountPrefix + e.Account
	}
	if e.CallerKey != "" {
		p.CallerKey = callers.KeyPrincipalPrefix + e.CallerKey
	}
	if sec := e.Secret; sec != nil {
		p.Secret = &credbrokerv1.AccountSecret{SecretId: sec.ID, CreateTime: timestamp(sec.CreateTime), ExpireTime: timestamp(sec.ExpireTime)}
	}
	return p
}
