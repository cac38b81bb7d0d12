package hub

import (
	"context"
	"net/http"
	"net/url"
	"strings"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/api"
	"github.com/credbroker/credbroker/server/internal/gate"
)

// callerList is the Callers page's: the keys (never a key itself, but
// for the one just created, shown once), and the form to create one.
type callerList struct {
	Keys []keyRow
	Next string
	// Created is the key just created, shown only on the answer to the
	// form that created it (a POST, so in no URL or history entry).
	Created *createdKey
	Form    keyForm
}

type keyRow struct{ ID, Role, State, Description, Created, Expires, Creator string }

type createdKey struct{ ID, Key string }

// keyForm is the "Create a caller key" form as sent.
type keyForm struct {
	KeyID, Role, Description, Expires string
	formErrors
}

var roleWords = map[credbrokerv1.Role]string{credbrokerv1.Role_ROLE_ADMIN: "admin", credbrokerv1.Role_ROLE_CALLER: "caller"}

func (h *Hub) callersPage(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	return h.showCallers(w, r, s, c, http.StatusOK, callerList{Form: keyForm{Role: "caller"}})
}

func (h *Hub) showCallers(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call, code int, l callerList) error {
	resp, err := h.api.Callers.ListCallerKeys(gate.WithCall(r.Context(), c), &credbrokerv1.ListCallerKeysRequest{PageSize: accountsPageSize, PageToken: r.URL.Query().Get("page")})
	if err != nil {
		return err
	}
	for _, k := range resp.GetCallerKeys() {
		l.Keys = append(l.Keys, keyRow{
			ID: strings.TrimPrefix(k.GetName(), "callerKeys/"), Role: roleWords[k.GetRole()],
			State:       strings.ToLower(strings.TrimPrefix(k.GetState().String(), "CALLER_KEY_STATE_")),
			Description: k.GetDescription(), Created: when(k.GetCreateTime()), Expires: day(k.GetExpireTime()), Creator: k.GetCreator(),
		})
	}
	if tok := resp.GetNextPageToken(); tok != "" {
		l.Next = "/callers?" + url.Values{"page": {tok}}.Encode()
	}
	p := signedInPage(s, "Caller keys", l)
	p.Notice = notices[r.URL.Query().Get("done")]
	h.render(w, code, "callers", p)
	return nil
}

// createCallerKey creates a key and shows it, once.
func (h *Hub) createCallerKey(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	f := keyForm{
		KeyID: strings.TrimSpace(r.PostFormValue("key_id")), Role: r.PostFormValue("role"),
		Description: strings.TrimSpace(r.PostFormValue("description")), Expires: strings.TrimSpace(r.PostFormValue("expires")),
	}
	req := &credbrokerv1.CreateCallerKeyRequest{KeyId: f.KeyID, CallerKey: &credbrokerv1.CallerKey{Description: f.Description}}
	for role, name := range roleWords {
		if name == f.Role {
			req.CallerKey.Role = role
		}
	}
	var err error
	var resp *credbrokerv1.CreateCallerKeyResponse
	if req.CallerKey.ExpireTime, err = formDay("expires", f.Expires); err == nil {
		resp, err = h.api.Callers.CreateCallerKey(gate.WithCall(r.Context(), c), req)
	}
	if err != nil {
		fe, ok := placeError(err, map[string]place{"expire_time": {field: "expires"}, "AlreadyExists": {field: "key_id"}})
		if !ok {
			return err
		}
		f.formErrors = fe.only("key_id", "role", "description", "expires")
		if serr := h.showCallers(w, r, s, c, httpCode(err), callerList{Form: f}); serr != nil {
			return serr
		}
		return rendered{err}
	}
	created := &createdKey{ID: strings.TrimPrefix(resp.GetCallerKey().GetName(), "callerKeys/"), Key: resp.GetKey()}
	return h.showCallers(w, r, s, c, http.StatusOK, callerList{Created: created, Form: keyForm{Role: "caller"}})
}

func (h *Hub) revokeCallerKey(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	return h.changeCallerKey(w, r, c, "key-revoked", func(ctx context.Context, name string) error {
		_, err := h.api.Callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: name})
		return err
	})
}

func (h *Hub) deleteCallerKey(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	return h.changeCallerKey(w, r, c, "key-deleted", func(ctx context.Context, name string) error {
		_, err := h.api.Callers.DeleteCallerKey(ctx, &credbrokerv1.DeleteCallerKeyRequest{Name: name})
		return err
	})
}

// changeCallerKey makes the change of the key the path names, then shows
// the keys with notice.
func (h *Hub) changeCallerKey(w http.ResponseWriter, r *http.Request, c *gate.Call, notice string, change func(ctx context.Context, name string) error) error {
	name := "callerKeys/" + r.PathValue("id")
	if api.ValidAccountID(r.PathValue("id")) { // key ids are spelled as account ids
		c.Resource = name
	}
	if err := change(gate.WithCall(r.Context(), c), name); err != nil {
		return err
	}
	done(w, r, "/callers", notice)
	return nil
}
