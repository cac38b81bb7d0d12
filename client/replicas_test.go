package client_test

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// replica is a TokenService on loopback that answers every GetToken with
// a token naming it, or with UNAVAILABLE while down is set.
type replica struct {
	credbrokerv1.UnimplementedTokenServiceServer
	name  string
	down  atomic.Bool
	calls atomic.Int32
	addr  string
}

func (r *replica) GetToken(context.Context, *credbrokerv1.GetTokenRequest) (*credbrokerv1.GetTokenResponse, error) {
	r.calls.Add(1)
	if r.down.Load() {
		return nil, status.Error(codes.Unavailable, "this replica cannot reach its storage")
	}
	return &credbrokerv1.GetTokenResponse{AccessToken: "token-of-" + r.name, TokenType: "Bearer", ExpireTime: timestamppb.New(time.Now().Add(time.Hour))}, nil
}

func startReplica(t *testing.T, name string) *replica {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{name: name, addr: l.Addr().String()}
	s := grpc.NewServer()
	credbrokerv1.RegisterTokenServiceServer(s, r)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return r
}

// Given several replicas, the client spreads GetToken calls over them, and
// retries one that a replica answers UNAVAILABLE on another.
func TestClientSpreadsCallsAndRetriesOnAnotherReplica(t *testing.T) {
	ctx := context.Background()
	rs := []*replica{startReplica(t, "a"), startReplica(t, "b"), startReplica(t, "c")}
	c, err := client.New(rs[0].addr+","+rs[1].addr+","+rs[2].addr, client.WithCallerKey("cbk_test"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tokens := credbrokerv1.NewTokenServiceClient(c.Conn())
	get := func() string {
		t.Helper()
		resp, err := tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
		if err != nil {
			t.Fatalf("GetToken: %v", err)
		}
		return resp.GetAccessToken()
	}
	// Round robin reaches every replica once all are connected.
	deadline := time.Now().Add(5 * time.Second)
	for seen := map[string]bool{}; len(seen) < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("calls reached only %v", seen)
		}
		seen[get()] = true
	}

	rs[1].down.Store(true)
	for range 30 {
		if tok := get(); tok == "token-of-b" {
			t.Fatal("got a token from the replica that answers UNAVAILABLE")
		}
	}
	if rs[1].calls.Load() == 0 {
		t.Fatal("no call reached the down replica: the retries were not tested")
	}

	for _, r := range rs {
		r.down.Store(true)
	}
	_, err = tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "storage") {
		t.Fatalf("with every replica down: %v, want their UNAVAILABLE", err)
	}
}
