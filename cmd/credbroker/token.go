package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func tokenGet(s *session, args []string) error {
	var (
		id     string
		minTTL time.Duration
	)
	fs := s.flags("ACCOUNT [flags]", `Gets an access token of ACCOUNT, as a service would, with any caller
identity the account grants. For scripts:
  TOKEN=$(credbroker token get acme --output json | jq -r .accessToken)`)
	fs.DurationVar(&minTTL, "min-ttl", 0, "the token must stay valid at least this long")
	if err := s.parse(fs, args, &id); err != nil {
		return err
	}
	s.denied = "an admin can grant it with: credbroker accounts grant ACCOUNT PRINCIPAL"
	req := &credbrokerv1.GetTokenRequest{Name: resourceName("accounts", id)}
	if minTTL > 0 {
		req.MinTtl = durationpb.New(minTTL)
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewTokenServiceClient(conn).GetToken(ctx, req)
		if err != nil {
			return err
		}
		return s.print(resp, func(w io.Writer) {
			fmt.Fprintf(w, "ACCOUNT\t%s\nTOKEN TYPE\t%s\nEXPIRES\t%s\nAPI BASE URL\t%s\nHEADERS\t%s\nACCESS TOKEN\t%s\n", req.GetName(), resp.GetTokenType(),
				when(resp.GetExpireTime(), time.Now()), dash(resp.GetApiBaseUrl()), sortedPairs(resp.GetHeaders(), ": "), resp.GetAccessToken())
		})
	})
}
