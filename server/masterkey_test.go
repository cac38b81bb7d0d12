package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/store"
)

// withKeys restarts a replica with master and, if set, previous keys.
func (b *broker) withKeys(t *testing.T, master, previous string) *broker {
	t.Helper()
	b.stop()
	cfg := b.cfg
	cfg.MasterKey, cfg.PreviousMasterKey = master, previous
	return startWith(t, cfg, b.fake, b.logs)
}

func keyID(t *testing.T, text string) string {
	t.Helper()
	k, err := keyring.ParseMasterKey(text)
	if err != nil {
		t.Fatal(err)
	}
	return k.ID()
}

// Three replicas move their etcd database to a new master key while they
// serve: the rotation is refused while a replica lacks the new key; once
// every replica holds both keys it moves every account to a fresh data key
// under the new one, with GetToken and admin writes going on on every
// replica and none failing; afterwards the replicas start with the new key
// alone and serve the tokens they had, with no new token request, the
// old key alone is refused, and the audit trail reads whole.
func TestOnlineMasterKeyRotation(t *testing.T) {
	ctx := context.Background()
	rs, _ := startReplicas(t, 3, 1, func(_ int, cfg *server.Config) { cfg.Gate.RateLimit = -1 })
	oldKey := rs[0].cfg.MasterKey
	const accounts = 40
	for i := range accounts {
		rs[0].link(t, fmt.Sprint("acct-", i))
	}
	before := map[string]string{}
	for i := range accounts {
		id := fmt.Sprint("acct-", i)
		before[id] = rs[i%3].token(t, id).GetAccessToken()
	}
	requests := rs[0].fake.Requests()
	if _, err := rs[0].callers.CreateCallerKey(ctx, &credbrokerv1.CreateCallerKeyRequest{
		KeyId: "other", CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER},
	}); err != nil {
		t.Fatal(err)
	}

	rs[0] = rs[0].withKeys(t, newMasterKey, oldKey)
	_, err := credbrokerv1.NewMasterKeyServiceClient(rs[0].conn).RotateMasterKey(ctx, &credbrokerv1.RotateMasterKeyRequest{})
	st := wantCode(t, err, codes.FailedPrecondition, credbrokerv1.ErrorReason_MASTER_KEY_ROTATION_BLOCKED.String())
	if !strings.Contains(st.Message(), "2 running replica(s) do not hold the new master key "+keyID(t, newMasterKey)) {
		t.Fatalf("the refusal does not say which replicas lack the key: %s", st.Message())
	}
	rs[1] = rs[1].withKeys(t, newMasterKey, oldKey)
	rs[2] = rs[2].withKeys(t, newMasterKey, oldKey)

	var calls, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	repeat := func(call func(i int)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				call(i)
			}
		}()
	}
	for _, r := range rs {
		repeat(func(i int) {
			id := fmt.Sprint("acct-", i%accounts)
			resp, err := r.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/" + id})
			calls.Add(1)
			if err != nil || resp.GetAccessToken() != before[id] {
				failed.Add(1)
				t.Errorf("GetToken %s during the rotation: %v", id, err)
			}
		})
	}
	repeat(func(i int) { // an admin changing grants on another replica meanwhile
		name := fmt.Sprintf("accounts/acct-%d", i%accounts)
		if _, err := rs[1].accounts.AddAccountGrant(ctx, &credbrokerv1.AddAccountGrantRequest{Name: name, Principal: "callerKeys/other"}); err != nil {
			failed.Add(1)
			t.Errorf("AddAccountGrant during the rotation: %v", err)
		}
		if _, err := rs[1].accounts.RemoveAccountGrant(ctx, &credbrokerv1.RemoveAccountGrantRequest{Name: name, Principal: "callerKeys/other"}); err != nil {
			failed.Add(1)
			t.Errorf("RemoveAccountGrant during the rotation: %v", err)
		}
		calls.Add(2)
	})
	time.Sleep(200 * time.Millisecond)
	resp, err := credbrokerv1.NewMasterKeyServiceClient(rs[2].conn).RotateMasterKey(ctx, &credbrokerv1.RotateMasterKeyRequest{})
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetFromKeyId() != keyID(t, oldKey) || resp.GetToKeyId() != keyID(t, newMasterKey) || resp.GetAccountsResealed() != accounts || resp.GetRecordsRetagged() == 0 {
		t.Fatalf("rotation: %v", resp)
	}
	t.Logf("%d calls during the rotation, %d failed; %d accounts resealed, %d records tagged anew", calls.Load(), failed.Load(), resp.GetAccountsResealed(), resp.GetRecordsRetagged())
	if calls.Load() < 10 {
		t.Fatal("too few calls were made during the rotation to show anything")
	}

	for i := range rs {
		rs[i] = rs[i].withKeys(t, newMasterKey, "")
	}
	for i := range accounts {
		id := fmt.Sprint("acct-", i)
		if got := rs[(i+1)%3].token(t, id).GetAccessToken(); got != before[id] {
			t.Fatalf("%s serves another token after the rotation", id)
		}
	}
	if got := rs[0].fake.Requests(); got != requests {
		t.Fatalf("%d new token requests: the cached tokens were not kept across the rotation", got-requests)
	}
	events, err := rs[0].audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Principal: "callerKeys/bootstrap-admin", PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	switched, rotated := false, false
	for _, ev := range events.GetEvents() {
		if ev.GetMethod() == credbrokerv1.MasterKeyService_RotateMasterKey_FullMethodName && ev.GetCode() == codes.OK.String() && ev.GetPrincipal() == "callerKeys/bootstrap-admin" {
			switched = switched || strings.HasPrefix(ev.GetDetail(), "switched the database from master key "+keyID(t, oldKey))
			rotated = rotated || strings.Contains(ev.GetDetail(), fmt.Sprintf("%d accounts moved", accounts))
		}
	}
	listed := 0
	for req := (&credbrokerv1.ListAuditEventsRequest{PageSize: 1000}); ; {
		page, err := rs[1].audit.ListAuditEvents(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range page.GetEvents() {
			if ev.GetMethod() == store.TamperedEvent {
				t.Fatalf("an audit event fails its check after the rotation: %v", ev)
			}
		}
		listed += len(page.GetEvents())
		if req.PageToken = page.GetNextPageToken(); req.PageToken == "" {
			break
		}
	}
	if listed < int(calls.Load()) {
		t.Fatalf("%d audit events listed after the rotation, fewer than the %d calls made during it", listed, calls.Load())
	}
	if !switched || !rotated {
		t.Fatalf("the switch (%v) or the whole rotation (%v) is not in the audit trail", switched, rotated)
	}
	for _, r := range rs {
		if strings.Contains(r.logs.String(), "failed its integrity check") {
			t.Fatal("a replica found a record it could not verify")
		}
	}
	old := rs[0].cfg
	old.MasterKey, old.DataDir = oldKey, t.TempDir()
	if _, err := server.New(old); !errors.Is(err, keyring.ErrWrongMasterKey) || !strings.Contains(err.Error(), "the database is under master key "+keyID(t, newMasterKey)) {
		t.Fatalf("a replica with the old key alone after the rotation: %v", err)
	}
	old.PreviousMasterKey = newMasterKey
	if _, err := server.New(old); err == nil || !strings.Contains(err.Error(), "was retired by a rotation") {
		t.Fatalf("a replica with the keys swapped after the rotation: %v", err)
	}
}

// A replica that does not hold the new key but whose announcement is gone
// (its lease ended while it was paused) when the rotation is made stops
// serving as it sees the switch: calls get UNAVAILABLE, /readyz says why,
// and it does not take the records it can no longer verify for tampered
// ones.
func TestReplicaWithoutTheNewKeyStopsServing(t *testing.T) {
	ctx := context.Background()
	rs, cluster := startReplicas(t, 2, 1, nil)
	oldKey := rs[0].cfg.MasterKey
	rs[0].link(t, "acme")
	rs[0] = rs[0].withKeys(t, newMasterKey, oldKey)
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	announced, err := cli.Get(ctx, "/credbroker/replicas/", clientv3.WithPrefix())
	if err != nil || len(announced.Kvs) != 2 {
		t.Fatalf("announcements: %v, %v", announced, err)
	}
	for _, kv := range announced.Kvs {
		if !strings.Contains(string(kv.Value), keyID(t, newMasterKey)) {
			if _, err := cli.Delete(ctx, string(kv.Key)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := credbrokerv1.NewMasterKeyServiceClient(rs[0].conn).RotateMasterKey(ctx, &credbrokerv1.RotateMasterKeyRequest{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() error {
		_, err := rs[1].tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
		if status.Code(err) == codes.Unavailable {
			return nil
		}
		return fmt.Errorf("GetToken on the replica without the new key: %v", err)
	})
	_, err = rs[1].tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	wantCode(t, err, codes.Unavailable, credbrokerv1.ErrorReason_MASTER_KEY_MISSING.String())
	resp, err := http.Get(rs[1].opsURL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK || !strings.Contains(string(body), "master key this one does not hold") {
		t.Fatalf("/readyz of the replica without the new key: %d %s", resp.StatusCode, body)
	}
	if logs := rs[1].logs.String(); strings.Contains(logs, "integrity check") || !strings.Contains(logs, "does not hold") {
		t.Fatalf("the replica without the new key logged:\n%s", logs)
	}
	if rs[0].token(t, "acme").GetAccessToken() == "" {
		t.Fatal("the replica with the new key serves no token")
	}
}

// While a rotation is unfinished, a replica does not start without the
// previous key, saying what to do; with both it starts, and the rotation
// command finishes the job, after which the new key alone will do.
func TestUnfinishedRotationNeedsThePreviousKey(t *testing.T) {
	ctx := context.Background()
	rs, cluster := startReplicas(t, 1, 1, nil)
	oldKey := rs[0].cfg.MasterKey
	rs[0].link(t, "acme")
	rs[0] = rs[0].withKeys(t, newMasterKey, oldKey)
	if _, err := credbrokerv1.NewMasterKeyServiceClient(rs[0].conn).RotateMasterKey(ctx, &credbrokerv1.RotateMasterKeyRequest{}); err != nil {
		t.Fatal(err)
	}
	rs[0].stop()
	// Put back the record of the rotation, as if it had been cut off.
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "/credbroker/data/meta/master-key-rotation", fmt.Sprintf(`{"from":%q,"to":%q}`, keyID(t, oldKey), keyID(t, newMasterKey))); err != nil {
		t.Fatal(err)
	}
	cfg := rs[0].cfg
	cfg.MasterKey, cfg.PreviousMasterKey = newMasterKey, ""
	if _, err := server.New(cfg); err == nil || !strings.Contains(err.Error(), "has not finished") || !strings.Contains(err.Error(), "--previous-master-key-file") {
		t.Fatalf("start without the previous key during a rotation: %v", err)
	}
	b := startWith(t, rs[0].cfg, rs[0].fake, rs[0].logs)
	resp, err := credbrokerv1.NewMasterKeyServiceClient(b.conn).RotateMasterKey(ctx, &credbrokerv1.RotateMasterKeyRequest{})
	if err != nil || resp.GetFromKeyId() != keyID(t, oldKey) {
		t.Fatalf("finishing the rotation: %v, %v", resp, err)
	}
	b = b.withKeys(t, newMasterKey, "")
	if b.token(t, "acme").GetAccessToken() == "" {
		t.Fatal("no token after the rotation")
	}
	_, err = credbrokerv1.NewMasterKeyServiceClient(b.conn).RotateMasterKey(ctx, &credbrokerv1.RotateMasterKeyRequest{})
	if st := wantCode(t, err, codes.FailedPrecondition, credbrokerv1.ErrorReason_MASTER_KEY_ROTATION_BLOCKED.String()); !strings.Contains(st.Message(), "nothing to rotate to") {
		t.Fatalf("a rotation on a replica with one key: %s", st.Message())
	}
}
