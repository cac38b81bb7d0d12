package api

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/grants"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
)

type callerService struct {
	credbrokerv1.UnimplementedCallerServiceServer
	callers *callers.Service
	grants  *grants.Index
	errs    errorMapper
}

func (s *callerService) CreateCallerKey(ctx context.Context, req *credbrokerv1.CreateCallerKeyRequest) (*credbrokerv1.CreateCallerKeyResponse, error) {
	c := gate.CallFrom(ctx)
	in, err := newCallerKey(req, c.Time)
	if err != nil {
		return nil, err
	}
	in.Creator = c.Principal
	if !s.callers.Exists(in.ID) {
		if err := s.notGranted(callers.KeyPrincipalPrefix+in.ID, "left from a deleted key of this name"); err != nil {
			return nil, err
		}
	}
	k, key, err := s.callers.Create(ctx, in, c.ChangeEvent(callers.KeyPrincipalPrefix+in.ID, "role "+string(in.Role)))
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.CreateCallerKeyResponse{CallerKey: callerKeyProto(k, c.Time), Key: key.Reveal()}, nil
}

func (s *callerService) ListCallerKeys(ctx context.Context, req *credbrokerv1.ListCallerKeysRequest) (*credbrokerv1.ListCallerKeysResponse, error) {
	size, after, err := idPage(req)
	if err != nil {
		return nil, err
	}
	keys, more, err := s.callers.List(after, size)
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	resp := &credbrokerv1.ListCallerKeysResponse{CallerKeys: make([]*credbrokerv1.CallerKey, len(keys))}
	now := gate.CallFrom(ctx).Time
	for i, k := range keys {
		resp.CallerKeys[i] = callerKeyProto(k, now)
	}
	if more {
		resp.NextPageToken = idPageToken(keys[len(keys)-1].ID)
	}
	return resp, nil
}

func (s *callerService) RevokeCallerKey(ctx context.Context, req *credbrokerv1.RevokeCallerKeyRequest) (*credbrokerv1.RevokeCallerKeyResponse, error) {
	id, err := parseKeyName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	c := gate.CallFrom(ctx)
	k, changed, err := s.callers.Revoke(ctx, id, c.ChangeEvent(req.GetName(), ""))
	if err != nil {
		return nil, s.errs.toStatus(ctx, keyNotFound(req.GetName(), err))
	}
	return &credbrokerv1.RevokeCallerKeyResponse{CallerKey: callerKeyProto(k, c.Time), AlreadyRevoked: !changed}, nil
}

func (s *callerService) DeleteCallerKey(ctx context.Context, req *credbrokerv1.DeleteCallerKeyRequest) (*credbrokerv1.DeleteCallerKeyResponse, error) {
	id, err := parseKeyName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	if !s.callers.Exists(id) {
		return nil, keyNotFound(req.GetName(), callers.ErrNotFound)
	}
	if err := s.notGranted(req.GetName(), "which a new key of this name would get"); err != nil {
		return nil, err
	}
	c := gate.CallFrom(ctx)
	if err := s.callers.Delete(ctx, id, c.ChangeEvent(req.GetName(), "")); err != nil {
		return nil, s.errs.toStatus(ctx, keyNotFound(req.GetName(), err))
	}
	return &credbrokerv1.DeleteCallerKeyResponse{}, nil
}

// keyNotFound names the key name in err, if err says there is no such key.
func keyNotFound(name string, err error) error {
	if errors.Is(err, callers.ErrNotFound) {
		return grpcerr.New(codes.NotFound, name+": no such caller key")
	}
	return err
}

// notGranted refuses to free or take the name of a key whose principal
// accounts still grant (why says what is wrong with those grants): a new
// key of that name would get them.
func (s *callerService) notGranted(principal, why string) error {
	accounts := s.grants.Granting(principal)
	if len(accounts) == 0 {
		return nil
	}
	return grpcerr.WithReason(codes.FailedPrecondition, credbrokerv1.ErrorReason_KEY_STILL_GRANTED,
		fmt.Sprintf("accounts still grant %s, %s: remove those grants first (accounts %s)", principal, why, strings.Join(accounts, ", ")))
}

func (s *callerService) ListAdminPrincipals(ctx context.Context, _ *credbrokerv1.ListAdminPrincipalsRequest) (*credbrokerv1.ListAdminPrincipalsResponse, error) {
	list, err := s.callers.Admins()
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.ListAdminPrincipalsResponse{Principals: list}, nil
}

func (s *callerService) AddAdminPrincipal(ctx context.Context, req *credbrokerv1.AddAdminPrincipalRequest) (*credbrokerv1.AddAdminPrincipalResponse, error) {
	p, err := CheckAdminPrincipal(req.GetPrincipal())
	if err != nil {
		return nil, err
	}
	c := gate.CallFrom(ctx)
	_, err = s.callers.AddAdmin(ctx, p, c.Principal, c.ChangeEvent(gate.AdminPrincipalPrefix+p, ""))
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.AddAdminPrincipalResponse{}, nil
}

func (s *callerService) RemoveAdminPrincipal(ctx context.Context, req *credbrokerv1.RemoveAdminPrincipalRequest) (*credbrokerv1.RemoveAdminPrincipalResponse, error) {
	p, err := CheckAdminPrincipal(req.GetPrincipal())
	if err != nil {
		return nil, err
	}
	c := gate.CallFrom(ctx)
	if err := s.callers.RemoveAdmin(ctx, p, c.ChangeEvent(gate.AdminPrincipalPrefix+p, "")); err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.RemoveAdminPrincipalResponse{}, nil
}

var roleProto = map[callers.Role]credbrokerv1.Role{
	callers.RoleAdmin:  credbrokerv1.Role_ROLE_ADMIN,
	callers.RoleCaller: credbrokerv1.Role_ROLE_CALLER,
}

func callerKeyProto(k callers.Key, now time.Time) *credbrokerv1.CallerKey {
	out := &credbrokerv1.CallerKey{
		Name:        callers.KeyPrincipalPrefix + k.ID,
		Description: k.Description,
		Role:        roleProto[k.Role],
		ExpireTime:  timestamp(k.ExpireTime),
		CreateTime:  timestamp(k.CreateTime),
		RevokeTime:  timestamp(k.RevokeTime),
		Creator:     k.Creator,
		State:       credbrokerv1.CallerKeyState_CALLER_KEY_STATE_ACTIVE,
	}
	switch {
	case k.Tampered:
		out.State = credbrokerv1.CallerKeyState_CALLER_KEY_STATE_INTEGRITY_CHECK_FAILED
	case !k.RevokeTime.IsZero():
		out.State = credbrokerv1.CallerKeyState_CALLER_KEY_STATE_REVOKED
	case k.Expired(now):
		out.State = credbrokerv1.CallerKeyState_CALLER_KEY_STATE_EXPIRED
	}
	return out
}
