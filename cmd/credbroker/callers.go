package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func callersCreate(s *session, args []string) error {
	var id, role, description, expires string
	fs := s.flags("ID [flags]", `Creates a caller key callerKeys/ID for a service (role caller: it gets the
tokens of accounts it is granted) or a person (role admin). The key is
printed once; the broker keeps only a keyed hash of it.`)
	fs.StringVar(&role, "role", "caller", "caller or admin")
	fs.StringVar(&description, "description", "", "what the key is for")
	fs.StringVar(&expires, "expires", "", "when the key stops working (2027-03-01 or RFC 3339); never if unset")
	if err := s.parse(fs, args, &id); err != nil {
		return err
	}
	r, err := enumValue("role", "ROLE_", role, credbrokerv1.Role_value)
	if err != nil {
		return err
	}
	expire, err := parseTime("expires", expires)
	if err != nil {
		return err
	}
	req := &credbrokerv1.CreateCallerKeyRequest{KeyId: id, CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role(r), Description: description, ExpireTime: expire}}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewCallerServiceClient(conn).CreateCallerKey(ctx, req)
		if err != nil {
			return err
		}
		fmt.Fprintln(s.stderr, "The key is shown only now: hand it to its owner (as CREDBROKER_CALLER_KEY or a 0600 file) and do not keep a copy.")
		return s.print(resp, func(w io.Writer) {
			fmt.Fprintf(w, "NAME\t%s\nROLE\t%s\nEXPIRES\t%s\nKEY\t%s\n", resp.GetCallerKey().GetName(), enumText("ROLE_", resp.GetCallerKey().GetRole()),
				when(resp.GetCallerKey().GetExpireTime(), time.Now()), resp.GetKey())
		})
	})
}

func callersList(s *session, args []string) error {
	fs := s.flags("[flags]", "Lists the caller keys (never the keys themselves), revoked and expired ones included.")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		keys, err := allPages(0, func(token string) ([]*credbrokerv1.CallerKey, string, error) {
			resp, err := credbrokerv1.NewCallerServiceClient(conn).ListCallerKeys(ctx, &credbrokerv1.ListCallerKeysRequest{PageSize: 100, PageToken: token})
			return resp.GetCallerKeys(), resp.GetNextPageToken(), err
		})
		if err != nil {
			return err
		}
		all := &credbrokerv1.ListCallerKeysResponse{CallerKeys: keys}
		now := time.Now()
		return s.print(all, func(w io.Writer) {
			fmt.Fprintln(w, "NAME\tROLE\tSTATE\tEXPIRES\tCREATED\tDESCRIPTION")
			for _, k := range all.GetCallerKeys() {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", k.GetName(), enumText("ROLE_", k.GetRole()), enumText("CALLER_KEY_STATE_", k.GetState()),
					when(k.GetExpireTime(), now), when(k.GetCreateTime(), now), dash(k.GetDescription()))
			}
		})
	})
}

func callersRevoke(s *session, args []string) error {
	var id string
	fs := s.flags("ID [flags]", "Revokes a caller key: its very next call is refused.")
	if err := s.parse(fs, args, &id); err != nil {
		return err
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewCallerServiceClient(conn).RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: resourceName("callerKeys", id)})
		if err != nil {
			return err
		}
		return s.print(resp, func(w io.Writer) {
			if resp.GetAlreadyRevoked() {
				fmt.Fprintf(w, "%s was revoked already, %s; nothing changed\n", resp.GetCallerKey().GetName(), when(resp.GetCallerKey().GetRevokeTime(), time.Now()))
				return
			}
			fmt.Fprintf(w, "revoked %s\n", resp.GetCallerKey().GetName())
		})
	})
}

func callersDelete(s *session, args []string) error {
	var id string
	fs := s.flags("ID [flags]", `Deletes a caller key for good (revoking it if need be): its very next call is
refused, it is no longer listed, and ID may be given to a new key. Remove
the key's grants first (credbroker accounts ungrant): a new key of the same
name would get them. The audit trail keeps what the key did.`)
	if err := s.parse(fs, args, &id); err != nil {
		return err
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewCallerServiceClient(conn).DeleteCallerKey(ctx, &credbrokerv1.DeleteCallerKeyRequest{Name: resourceName("callerKeys", id)})
		if err != nil {
			return err
		}
		return s.print(resp, func(w io.Writer) { fmt.Fprintf(w, "deleted %s\n", resourceName("callerKeys", id)) })
	})
}

func adminsList(s *session, args []string) error {
	fs := s.flags("[flags]", `Lists the client-certificate principals that hold the admin role (admin
caller keys are in credbroker callers list).`)
	if err := s.parse(fs, args); err != nil {
		return err
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewCallerServiceClient(conn).ListAdminPrincipals(ctx, &credbrokerv1.ListAdminPrincipalsRequest{})
		if err != nil {
			return err
		}
		if len(resp.GetPrincipals()) == 0 && s.output == "table" {
			fmt.Fprintln(s.stderr, "No client-certificate principal is an admin; admin caller keys are in: credbroker callers list")
		}
		return s.print(resp, func(w io.Writer) {
			fmt.Fprintln(w, "PRINCIPAL")
			for _, p := range resp.GetPrincipals() {
				fmt.Fprintln(w, p)
			}
		})
	})
}

func adminsAdd(s *session, args []string) error {
	var principal string
	fs := s.flags("PRINCIPAL [flags]", `Gives a client-certificate principal the admin role: a URI SAN as it is
(spiffe://example.org/ops), dns:NAME for a DNS SAN, or cn:TEXT for a
subject CN. Adding an admin again changes nothing.`)
	if err := s.parse(fs, args, &principal); err != nil {
		return err
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewCallerServiceClient(conn).AddAdminPrincipal(ctx, &credbrokerv1.AddAdminPrincipalRequest{Principal: principal})
		if err != nil {
			return err
		}
		return s.print(resp, func(w io.Writer) { fmt.Fprintf(w, "%s is an admin\n", principal) })
	})
}

func adminsRemove(s *session, args []string) error {
	var principal string
	fs := s.flags("PRINCIPAL [flags]", "Takes the admin role from a client-certificate principal; the last admin identity cannot be removed.")
	if err := s.parse(fs, args, &principal); err != nil {
		return err
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewCallerServiceClient(conn).RemoveAdminPrincipal(ctx, &credbrokerv1.RemoveAdminPrincipalRequest{Principal: principal})
		if err != nil {
			return err
		}
		return s.print(resp, func(w io.Writer) { fmt.Fprintf(w, "%s is no longer an admin\n", principal) })
	})
}
