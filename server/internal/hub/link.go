package hub

import (
	"net/http"
	"net/url"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/api"
	"github.com/credbroker/credbroker/server/internal/gate"
)

// linkForm is the "Link an account" form as sent: never its secret, which
// is not shown again, even to fix another field.
type linkForm struct {
	AccountID, DisplayName, ClientID, Region, OrgID string
	// Errors are what to fix, by field name; Error is about the whole form.
	Errors map[string]string
	Error  string
}

// rendered is an error whose page the handler rendered itself: the gate
// records it, and nothing more is shown.
type rendered struct{ error }

func (h *Hub) linkPage(w http.ResponseWriter, _ *http.Request, s *session, _ *gate.Call) error {
	h.render(w, http.StatusOK, "link", page{Title: "Link an account", Principal: s.Principal, CSRF: s.csrf, Link: &linkForm{Region: "us"}})
	return nil
}

// link is "Connect": it proves the credentials and stores the account, as
// CreateAccount does, or shows what to fix next to the field and keeps
// nothing.
func (h *Hub) link(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	f := linkForm{
		AccountID: strings.TrimSpace(r.PostFormValue("account_id")), DisplayName: strings.TrimSpace(r.PostFormValue("display_name")),
		ClientID: strings.TrimSpace(r.PostFormValue("client_id")), Region: r.PostFormValue("region"), OrgID: strings.TrimSpace(r.PostFormValue("org_id")),
	}
	region, ok := map[string]credbrokerv1.Region{"us": credbrokerv1.Region_REGION_US, "eu": credbrokerv1.Region_REGION_EU}[f.Region]
	if !ok {
		f.Region, f.Errors = "us", map[string]string{"region": "Choose US or EU: the console you sign in to (console.jumpcloud.com is US, console.eu.jumpcloud.com is EU)."}
		h.render(w, http.StatusBadRequest, "link", page{Title: "Link an account", Principal: s.Principal, CSRF: s.csrf, Link: &f})
		return rendered{status.Error(codes.InvalidArgument, "region: "+f.Errors["region"])}
	}
	req := &credbrokerv1.CreateAccountRequest{
		AccountId: f.AccountID,
		Account:   &credbrokerv1.Account{DisplayName: f.DisplayName},
		Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
			ClientId: f.ClientID, ClientSecret: r.PostFormValue("client_secret"), Region: region, OrgId: f.OrgID,
		}},
	}
	in, err := api.NewAccount(req)
	if err == nil {
		if in.ID == "" {
			in.ID = accounts.NewID()
		}
		c.Resource = "accounts/" + in.ID
		_, err = h.accounts.Create(r.Context(), in, false, c.ChangeEvent(c.Resource, "linked from the Hub"))
	}
	if err != nil {
		c.Detail = "" // nothing was linked
		err = api.StatusOf(r.Context(), h.cfg.Logger, err)
		code, msg := httpStatus(w, err)
		switch field, fieldMsg := formField(err); {
		case field != "":
			f.Errors = map[string]string{field: fieldMsg}
		case code == http.StatusInternalServerError:
			return err // the error page says it
		default:
			f.Error = msg
		}
		h.render(w, code, "link", page{Title: "Link an account", Principal: s.Principal, CSRF: s.csrf, Link: &f})
		return rendered{err}
	}
	http.Redirect(w, r, "/accounts/linked?"+url.Values{"id": {in.ID}}.Encode(), http.StatusSeeOther)
	return nil
}

// formField is the form field an error is about, and what to say there:
// a request field it names, the secret the provider rejected, the id
// already taken; "" if it is about the form as a whole.
func formField(err error) (string, string) {
	st := status.Convert(err)
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				name := v.GetField()
				return name[strings.LastIndex(name, ".")+1:], v.GetDescription()
			}
		case *errdetails.ErrorInfo:
			if d.GetReason() == credbrokerv1.ErrorReason_CREDENTIALS_REJECTED.String() {
				return "client_secret", "JumpCloud rejected this Client ID and Client Secret; check both. (" + st.Message() + ")"
			}
		}
	}
	if st.Code() == codes.AlreadyExists {
		return "account_id", st.Message()
	}
	return "", ""
}

// linkedPage confirms a linked account.
func (h *Hub) linkedPage(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	id := r.URL.Query().Get("id")
	if !api.ValidAccountID(id) {
		return status.Error(codes.InvalidArgument, "id must be an account id")
	}
	c.Resource = "accounts/" + id
	v, err := h.accounts.Get(id)
	if err != nil {
		return err
	}
	row := row(v, h.cfg.Now())
	h.render(w, http.StatusOK, "linked", page{Title: "Linked", Principal: s.Principal, CSRF: s.csrf, Linked: &row})
	return nil
}
