// Package api is the broker's API behind the gate: the gRPC services
// (AccountService, CallerService, TokenService, AuditService,
// BackupService, MasterKeyService, ConnectService, EventService and
// WebhookService) and the egress proxy's HTTP handler. Its handlers are
// thin: they validate requests (validate.go, paging.go), call the core,
// and map every error to a status in one place (errors.go). Who may call
// them, and the audit event of each call, is the gate's business.
package api

import (
	"log/slog"
	"net/http"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/connect"
	"github.com/credbroker/credbroker/server/internal/events"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/grants"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/metrics"
	"github.com/credbroker/credbroker/server/internal/proxy"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/tokens"
	"github.com/credbroker/credbroker/server/internal/webhooks"
)

// Core is what the handlers call.
type Core struct {
	Accounts *accounts.Service
	Callers  *callers.Service
	Tokens   *tokens.Manager
	Grants   *grants.Index
	Audit    *audit.Log
	Metrics  *metrics.Metrics
	// Store takes Backup's snapshots, which are staged in DataDir.
	Store   *store.Store
	DataDir string
	// MasterKey is the configured master key, which RotateMasterKey moves
	// the database to.
	MasterKey *keyring.MasterKey
	// Events are the credential events; EventLogID (of the database's id)
	// marks their resume tokens.
	Events     *events.Service
	EventLogID []byte
	Webhooks   *webhooks.Service
	// Links makes connect links, opened at HubURL() ("" without a Hub).
	Links  *connect.Service
	HubURL func() string
	// Logger logs the unexpected errors that callers see only as INTERNAL.
	Logger *slog.Logger
}

// Services are the gRPC services' handlers. The Hub calls them in-process,
// with the gate's call in the context (gate.WithCall), so that a page
// checks, changes and maps errors exactly as the API does.
type Services struct {
	Accounts  credbrokerv1.AccountServiceServer
	Tokens    credbrokerv1.TokenServiceServer
	Callers   credbrokerv1.CallerServiceServer
	Audit     credbrokerv1.AuditServiceServer
	Backup    credbrokerv1.BackupServiceServer
	MasterKey credbrokerv1.MasterKeyServiceServer
	Connect   credbrokerv1.ConnectServiceServer
	Events    credbrokerv1.EventServiceServer
	Webhooks  credbrokerv1.WebhookServiceServer
}

// NewServices builds the services' handlers on c.
func NewServices(c Core) Services {
	errs := errorMapper{log: c.Logger}
	return Services{
		Accounts:  &accountService{accounts: c.Accounts, callers: c.Callers, errs: errs},
		Tokens:    &tokenService{tokens: c.Tokens, grants: c.Grants, errs: errs, metrics: c.Metrics},
		Callers:   &callerService{callers: c.Callers, grants: c.Grants, errs: errs},
		Audit:     &auditService{audit: c.Audit, errs: errs},
		Backup:    &backupService{store: c.Store, dir: c.DataDir, audit: c.Audit, errs: errs},
		MasterKey: &masterKeyService{store: c.Store, to: c.MasterKey, log: c.Logger, errs: errs},
		Connect:   &connectService{links: c.Links, hubURL: c.HubURL, errs: errs},
		Events:    &eventService{events: c.Events, callers: c.Callers, logID: c.EventLogID, errs: errs},
		Webhooks:  &webhookService{webhooks: c.Webhooks, events: c.Events, errs: errs},
	}
}

// Register registers the services on g, whose interceptors must include
// the gate's.
func (s Services) Register(g *grpc.Server) {
	credbrokerv1.RegisterAccountServiceServer(g, s.Accounts)
	credbrokerv1.RegisterTokenServiceServer(g, s.Tokens)
	credbrokerv1.RegisterCallerServiceServer(g, s.Callers)
	credbrokerv1.RegisterAuditServiceServer(g, s.Audit)
	credbrokerv1.RegisterBackupServiceServer(g, s.Backup)
	credbrokerv1.RegisterMasterKeyServiceServer(g, s.MasterKey)
	credbrokerv1.RegisterConnectServiceServer(g, s.Connect)
	credbrokerv1.RegisterEventServiceServer(g, s.Events)
	credbrokerv1.RegisterWebhookServiceServer(g, s.Webhooks)
}

// ProxyHandler is the egress proxy: gt admits each call, the caller's
// grant for the account is checked, and fwd forwards it.
func ProxyHandler(c Core, gt *gate.Gate, fwd *proxy.Forwarder) http.Handler {
	return &proxyHandler{gate: gt, audit: c.Audit, grants: c.Grants, fwd: fwd, errs: errorMapper{log: c.Logger}}
}

// CallEvent says whether an audit event records a call that callers can
// make at volume (GetToken, a proxied call, a tally of refused calls, any
// refused or failed call): only those give way when the trail is over
// --audit-max-events, so that admin changes and the broker's own events
// go by age alone.
func CallEvent(ev store.AuditEvent) bool {
	switch {
	case ev.Principal == audit.BrokerPrincipal:
		return false
	case ev.Method == credbrokerv1.TokenService_GetToken_FullMethodName, ev.Method == ProxyMethod,
		ev.Method == gate.RefusalMethod, ev.Method == gate.DeniedMethod:
		return true
	}
	return ev.Code != grpcerr.CodeName(codes.OK)
}
