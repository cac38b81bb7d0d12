package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/datadir"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

// demo is a broker on loopback with one linked JumpCloud account, "acme",
// and a stand-in for JumpCloud's API that answers only requests carrying
// acme's current token and org id.
type demo struct {
	target   string
	key      string // the service's caller key, granted acme
	admin    string // the admin's caller key
	fake     *jumpcloudfake.Fake
	apiURL   string
	apiCalls int
	stop     func()
}

const demoOrgID = "5a1234567890abcdef123456"

func startDemo() (*demo, error) {
	d := &demo{fake: jumpcloudfake.New("demo-client", "demo-secret")}
	tokenSrv := httptest.NewServer(d.fake)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.apiCalls++
		if r.Header.Get("Authorization") != "Bearer "+d.fake.LastToken() || r.Header.Get("x-org-id") != demoOrgID {
			http.Error(w, `{"message":"Unauthorized"}`, http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, "%s %s?%s", r.Method, r.URL.Path, r.URL.RawQuery)
	}))
	d.apiURL = api.URL + "/api"
	dataDir, err := os.MkdirTemp("", "credbroker-client-test")
	if err != nil {
		return nil, err
	}
	cfg := server.Config{
		ListenAddr:      "127.0.0.1:0",
		ProxyListenAddr: "127.0.0.1:0",
		OpsListenAddr:   "127.0.0.1:0",
		HubListenAddr:   "off",
		Config: datadir.Config{
			DataDir:   dataDir,
			MasterKey: "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=",
			Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		},
	}
	cfg.Provider.JumpCloudTokenURLUS = tokenSrv.URL + jumpcloudfake.TokenPath
	cfg.Provider.JumpCloudAPIURLUS = d.apiURL
	srv, err := server.New(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx); close(done) }()
	d.target = srv.Addr().String()
	admin := srv.BootstrapAdminKey()
	d.admin = admin
	d.stop = func() {
		cancel()
		<-done
		tokenSrv.Close()
		api.Close()
		os.RemoveAll(dataDir)
	}
	if err := d.setUp(admin, "acme"); err != nil {
		d.stop()
		return nil, err
	}
	return d, nil
}

// setUp links an account and makes a caller key for the service that may
// use it, with the generated admin clients, as an admin tool would.
func (d *demo) setUp(adminKey, id string) error {
	conn, err := grpcConn(d.target, adminKey)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx := context.Background()
	if _, err = credbrokerv1.NewAccountServiceClient(conn).CreateAccount(ctx, &credbrokerv1.CreateAccountRequest{
		AccountId: id,
		Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
			ClientId: "demo-client", ClientSecret: "demo-secret", Region: credbrokerv1.Region_REGION_US, OrgId: demoOrgID,
		}},
	}); err != nil {
		return err
	}
	key, err := credbrokerv1.NewCallerServiceClient(conn).CreateCallerKey(ctx, &credbrokerv1.CreateCallerKeyRequest{
		KeyId: "demo-service", CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER},
	})
	if err != nil {
		return err
	}
	d.key = key.GetKey()
	_, err = credbrokerv1.NewAccountServiceClient(conn).AddAccountGrant(ctx, &credbrokerv1.AddAccountGrantRequest{Name: "accounts/" + id, Principal: "callerKeys/demo-service"})
	return err
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func body(resp *http.Response) string {
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}
