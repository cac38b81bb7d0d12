package audit

import (
	"time"

	"github.com/credbroker/credbroker/server/internal/store"
)

// BrokerPrincipal is the principal of the broker's own actions in the
// audit trail: a name no caller can have (principals of callers are typed:
// "callerKeys/...", "spiffe://...", "dns:...", "cn:...").
const BrokerPrincipal = "credbroker"

// AccountNamePrefix starts an account's resource name.
const AccountNamePrefix = "accounts/"

// AccountName is an account's resource name, "accounts/{account_id}", as
// the API and the audit trail name it.
func AccountName(id string) string { return AccountNamePrefix + id }

// codeOK is the code of a call or action that succeeded, as gRPC names it.
const codeOK = "OK"

// Own is the event of an action the broker took by itself (method names
// it), on resource, with detail.
func Own(now time.Time, method, resource, detail string) store.AuditEvent {
	return store.AuditEvent{Time: now, Principal: BrokerPrincipal, Method: method, Resource: resource, Code: codeOK, Detail: detail}
}
