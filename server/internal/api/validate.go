package api

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/grants"
	"github.com/credbroker/credbroker/server/internal/mtls"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/secret"
)

// Request validation. Every failure is INVALID_ARGUMENT naming the field.

const accountPrefix = audit.AccountNamePrefix

var (
	orgIDPattern    = regexp.MustCompile(`^[0-9a-f]{24}$`)
	labelKeyPattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)
)

const (
	maxDisplayName = 200
	maxLabels      = 64
	maxLabelValue  = 63
	maxClientID    = 256
	maxSecret      = 4096
	maxScopes      = 50
	maxParams      = 20
)

// validAccountID: 1-63 lowercase letters, digits and hyphens, starting and
// ending with a letter or digit. Hand-written because GetToken runs it on
// every call.
func validAccountID(id string) bool {
	if len(id) == 0 || len(id) > 63 || id[0] == '-' || id[len(id)-1] == '-' {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// ValidAccountID reports whether id is an account id (for the Hub's pages,
// which take ids in their URLs).
func ValidAccountID(id string) bool { return validAccountID(id) }

func checkAccountID(field, id string) error {
	if !validAccountID(id) {
		return invalidArgument(field, "must be 1-63 lowercase letters, digits and hyphens, starting and ending with a letter or digit")
	}
	return nil
}

// parseName turns "accounts/{account_id}" into the id.
func parseName(field, name string) (string, error) {
	return idFromName(field, name, accountPrefix, "{account_id}")
}

// parseKeyName turns "callerKeys/{key_id}" into the id.
func parseKeyName(field, name string) (string, error) {
	return idFromName(field, name, callers.KeyPrincipalPrefix, "{key_id}")
}

// idFromName checks a resource name; account and key ids share one syntax.
func idFromName(field, name, prefix, placeholder string) (string, error) {
	id, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return "", invalidArgument(field, `must be "`+prefix+placeholder+`"`)
	}
	return id, checkAccountID(field, id)
}

// checkPrincipal accepts what caller keys and client certificates prove:
// "callerKeys/{key_id}" or a typed certificate principal.
func checkPrincipal(field, p string) error {
	if problem := principalProblem(p, false); problem != "" {
		return invalidArgument(field, problem)
	}
	return nil
}

// principalProblem says what is wrong with a principal, or returns "". An
// admin principal must be a certificate's: a caller key's role is set when
// it is created.
func principalProblem(p string, admin bool) string {
	rest, isKey := strings.CutPrefix(p, callers.KeyPrincipalPrefix)
	switch {
	case isKey && admin:
		return "must be a client-certificate principal: a caller key's role is set when it is created"
	case isKey && !validAccountID(rest):
		return `a caller key's principal is "callerKeys/{key_id}" with a valid key id`
	case isKey:
		return ""
	}
	if err := mtls.CheckPrincipal(p); err != nil {
		return err.Error()
	}
	return ""
}

func checkDisplayName(field, s string) error {
	if !utf8.ValidString(s) || utf8.RuneCountInString(s) > maxDisplayName {
		return invalidArgument(field, fmt.Sprintf("must be valid UTF-8 of at most %d characters", maxDisplayName))
	}
	return nil
}

func checkLabels(field string, labels map[string]string) error {
	if len(labels) > maxLabels {
		return invalidArgument(field, fmt.Sprintf("at most %d labels", maxLabels))
	}
	for k, v := range labels {
		if !labelKeyPattern.MatchString(k) {
			return invalidArgument(field, fmt.Sprintf("key %q must be 1-63 lowercase letters, digits, '_' and '-', starting with a letter", k))
		}
		if !utf8.ValidString(v) || len(v) > maxLabelValue {
			return invalidArgument(field, fmt.Sprintf("value of %q must be valid UTF-8 of at most %d bytes", k, maxLabelValue))
		}
	}
	return nil
}

// controlling says whether r changes how the text around it is shown
// rather than being shown: C0 and C1 controls, line and paragraph
// separators, and bidirectional overrides and isolates (which can make a
// terminal or page show text other than what is stored).
func controlling(r rune) bool {
	return r < 0x20 || r >= 0x7f && r <= 0x9f || r == 0x2028 || r == 0x2029 || r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069
}

// checkText accepts a required (or optional) short printable value.
func checkText(field, v string, required bool, maxLen int) error {
	if v == "" {
		if required {
			return invalidArgument(field, "is required")
		}
		return nil
	}
	if len(v) > maxLen {
		return invalidArgument(field, fmt.Sprintf("at most %d bytes", maxLen))
	}
	if !utf8.ValidString(v) {
		// The Hub's forms can send any bytes; stored as JSON, each invalid
		// byte would become U+FFFD, and two keys could become one.
		return invalidArgument(field, "must be UTF-8 text")
	}
	for _, r := range v {
		if controlling(r) {
			return invalidArgument(field, "must not contain control characters")
		}
	}
	return nil
}

// checkSecret never repeats the value in its message.
func checkSecret(field, v string) error {
	switch {
	case v == "":
		return invalidArgument(field, "is required")
	case len(v) > maxSecret:
		return invalidArgument(field, fmt.Sprintf("at most %d bytes", maxSecret))
	case strings.ContainsAny(v, "\r\n\x00"):
		return invalidArgument(field, "must not contain line breaks or NUL")
	}
	return nil
}

// checkEndpointURL accepts https URLs, and http only on loopback hosts (for
// local stand-ins): see provider.CheckEndpointURL, which checks them again
// whenever they are used.
func checkEndpointURL(field, raw string, required bool) error {
	if raw == "" {
		if required {
			return invalidArgument(field, "is required")
		}
		return nil
	}
	if err := provider.CheckEndpointURL(raw); err != nil {
		return invalidArgument(field, err.Error())
	}
	return nil
}

// NewAccount validates a CreateAccountRequest (CreateAccount's, or one the
// Hub's form built).
func NewAccount(req *credbrokerv1.CreateAccountRequest) (accounts.NewAccount, error) {
	out := accounts.NewAccount{ID: req.GetAccountId()}
	if out.ID != "" {
		if err := checkAccountID("account_id", out.ID); err != nil {
			return out, err
		}
	}
	out.DisplayName, out.Labels = req.GetAccount().GetDisplayName(), req.GetAccount().GetLabels()
	if err := checkDisplayName("account.display_name", out.DisplayName); err != nil {
		return out, err
	}
	if err := checkLabels("account.labels", out.Labels); err != nil {
		return out, err
	}

	var err error
	if out.SecretExpireTime, err = futureTime("secret_expire_time", req.GetSecretExpireTime(), time.Now()); err != nil {
		return out, err
	}
	switch c := req.GetCredentials().(type) {
	case *credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount:
		cr, err := jumpCloudCredentials(c.JumpcloudServiceAccount)
		out.Credentials = cr
		return out, err
	case *credbrokerv1.CreateAccountRequest_Oauth2ClientCredentials:
		cr, err := oauth2Credentials(c.Oauth2ClientCredentials)
		out.Credentials = cr
		return out, err
	case *credbrokerv1.CreateAccountRequest_JumpcloudApiKey:
		cr, err := jumpCloudAPIKey(c.JumpcloudApiKey)
		out.Credentials = cr
		return out, err
	}
	return out, invalidArgument("credentials", "set jumpcloud_service_account, jumpcloud_api_key or oauth2_client_credentials")
}

func jumpCloudCredentials(in *credbrokerv1.JumpCloudServiceAccountCredentials) (provider.Credentials, error) {
	const f = "jumpcloud_service_account."
	cr := provider.Credentials{Kind: provider.KindJumpCloudServiceAccount, ClientID: in.GetClientId(), OrgID: in.GetOrgId()}
	if err := checkText(f+"client_id", cr.ClientID, true, maxClientID); err != nil {
		return cr, err
	}
	if err := checkSecret(f+"client_secret", in.GetClientSecret()); err != nil {
		return cr, err
	}
	cr.ClientSecret = secret.New(in.GetClientSecret())
	return cr, checkJumpCloudPlace(f, in.GetRegion(), &cr)
}

func jumpCloudAPIKey(in *credbrokerv1.JumpCloudAPIKeyCredentials) (provider.Credentials, error) {
	const f = "jumpcloud_api_key."
	cr := provider.Credentials{Kind: provider.KindJumpCloudAPIKey, OrgID: in.GetOrgId()}
	if err := checkSecret(f+"api_key", in.GetApiKey()); err != nil {
		return cr, err
	}
	cr.ClientSecret = secret.New(in.GetApiKey())
	return cr, checkJumpCloudPlace(f, in.GetRegion(), &cr)
}

// checkJumpCloudPlace sets the region of a JumpCloud account and checks its
// organization ID, rejecting a malformed one before anything calls out.
func checkJumpCloudPlace(f string, region credbrokerv1.Region, cr *provider.Credentials) error {
	switch region {
	case credbrokerv1.Region_REGION_US:
		cr.Region = provider.RegionUS
	case credbrokerv1.Region_REGION_EU:
		cr.Region = provider.RegionEU
	case credbrokerv1.Region_REGION_IN:
		cr.Region = provider.RegionIN
	default:
		return invalidArgument(f+"region", "must be REGION_US, REGION_EU or REGION_IN (the console host you sign in to: console.jumpcloud.com is US, console.eu.jumpcloud.com is EU, console.in.jumpcloud.com is India)")
	}
	if cr.OrgID != "" && !orgIDPattern.MatchString(cr.OrgID) {
		return invalidArgument(f+"org_id", "must be 24 lowercase hexadecimal characters, as shown in the JumpCloud console")
	}
	return nil
}

func oauth2Credentials(in *credbrokerv1.OAuth2ClientCredentials) (provider.Credentials, error) {
	const f = "oauth2_client_credentials."
	cr := provider.Credentials{
		Kind: provider.KindOAuth2ClientCredentials, TokenURL: in.GetTokenUrl(), ClientID: in.GetClientId(),
		Scopes: in.GetScopes(), EndpointParams: in.GetEndpointParams(), APIBaseURL: in.GetApiBaseUrl(),
		AuthStyle: provider.AuthStyleHeader,
	}
	if in.GetAuthStyle() == credbrokerv1.AuthStyle_AUTH_STYLE_BODY {
		cr.AuthStyle = provider.AuthStyleBody
	}
	if err := checkEndpointURL(f+"token_url", cr.TokenURL, true); err != nil {
		return cr, err
	}
	if err := checkText(f+"client_id", cr.ClientID, true, maxClientID); err != nil {
		return cr, err
	}
	if err := checkSecret(f+"client_secret", in.GetClientSecret()); err != nil {
		return cr, err
	}
	cr.ClientSecret = secret.New(in.GetClientSecret())
	if err := checkScopes(f+"scopes", cr.Scopes); err != nil {
		return cr, err
	}
	if err := checkParams(f+"endpoint_params", cr.EndpointParams, "grant_type", "scope", "client_id", "client_secret"); err != nil {
		return cr, err
	}
	return cr, checkEndpointURL(f+"api_base_url", cr.APIBaseURL, false)
}

func checkScopes(field string, scopes []string) error {
	if len(scopes) > maxScopes {
		return invalidArgument(field, fmt.Sprintf("at most %d scopes", maxScopes))
	}
	for _, s := range scopes {
		if s == "" || strings.ContainsAny(s, " \"\\") || checkText(field, s, true, 256) != nil {
			return invalidArgument(field, "each scope must be non-empty printable text without spaces, quotes or backslashes")
		}
	}
	return nil
}

// checkParams checks extra request parameters: none of those the broker
// sets itself (reserved), each short printable text.
func checkParams(field string, params map[string]string, reserved ...string) error {
	if len(params) > maxParams {
		return invalidArgument(field, fmt.Sprintf("at most %d parameters", maxParams))
	}
	for k, v := range params {
		if slices.Contains(reserved, k) {
			return invalidArgument(field, fmt.Sprintf("%q is set by the broker", k))
		}
		if checkText(field, k, true, 256) != nil || checkText(field, v, false, 1024) != nil {
			return invalidArgument(field, fmt.Sprintf("parameter %q must be short printable text", k))
		}
	}
	return nil
}

// signInParams are the sign-in redirect's parameters that the broker sets.
var signInParams = []string{"response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method"}

// checkAuthorizationURL refuses an authorization URL whose own query sets
// what the broker sets, or that has a fragment (which would swallow them).
func checkAuthorizationURL(field, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return invalidArgument(field, "is not a URL")
	}
	if strings.Contains(raw, "#") {
		return invalidArgument(field, "must not have a fragment (#)")
	}
	for k := range u.Query() {
		if slices.Contains(signInParams, k) {
			return invalidArgument(field, fmt.Sprintf("must not set %q: the broker sets it", k))
		}
	}
	return nil
}

// maxDefaultLifetime bounds an authorization-code account's assumed token
// lifetime.
const maxDefaultLifetime = 24 * time.Hour

// NewAuthorizedAccount validates the Hub's request to link an
// authorization-code account: its id (required, since the sign-in comes
// back to it), display name, secret expiry and provider settings.
func NewAuthorizedAccount(id, displayName string, in *credbrokerv1.OAuth2AuthorizationCode, secretExpire *timestamppb.Timestamp) (accounts.NewAccount, error) {
	const f = "oauth2_authorization_code."
	out := accounts.NewAccount{ID: id, DisplayName: displayName}
	if id == "" {
		return out, invalidArgument("account_id", "is required: the sign-in comes back to it")
	}
	if err := checkAccountID("account_id", id); err != nil {
		return out, err
	}
	if err := checkDisplayName("account.display_name", displayName); err != nil {
		return out, err
	}
	var err error
	if out.SecretExpireTime, err = futureTime("secret_expire_time", secretExpire, time.Now()); err != nil {
		return out, err
	}
	cr := provider.Credentials{
		Kind: provider.KindOAuth2AuthorizationCode, AuthURL: in.GetAuthorizationUrl(), TokenURL: in.GetTokenUrl(), ClientID: in.GetClientId(),
		Scopes: in.GetScopes(), AuthParams: in.GetAuthorizationParams(), APIBaseURL: in.GetApiBaseUrl(), AuthStyle: provider.AuthStyleHeader,
	}
	if in.GetAuthStyle() == credbrokerv1.AuthStyle_AUTH_STYLE_BODY {
		cr.AuthStyle = provider.AuthStyleBody
	}
	out.Credentials = cr
	for _, check := range []func() error{
		func() error { return checkEndpointURL(f+"authorization_url", cr.AuthURL, true) },
		func() error { return checkAuthorizationURL(f+"authorization_url", cr.AuthURL) },
		func() error { return checkEndpointURL(f+"token_url", cr.TokenURL, true) },
		func() error { return checkText(f+"client_id", cr.ClientID, true, maxClientID) },
		func() error { return checkSecret(f+"client_secret", in.GetClientSecret()) },
		func() error { return checkScopes(f+"scopes", cr.Scopes) },
		func() error {
			return checkParams(f+"authorization_params", cr.AuthParams, signInParams...)
		},
		func() error { return checkEndpointURL(f+"api_base_url", cr.APIBaseURL, false) },
		func() error {
			d := in.GetDefaultTokenLifetime()
			if d == nil {
				return nil
			}
			if d.CheckValid() != nil || d.AsDuration() < time.Minute || d.AsDuration() > maxDefaultLifetime {
				return invalidArgument(f+"default_token_lifetime", fmt.Sprintf("must be between a minute and %s", maxDefaultLifetime))
			}
			out.Credentials.DefaultLifetime = d.AsDuration()
			return nil
		},
	} {
		if err := check(); err != nil {
			return out, err
		}
	}
	out.Credentials.ClientSecret = secret.New(in.GetClientSecret())
	return out, nil
}

// newCallerKey checks a CreateCallerKeyRequest.
func newCallerKey(req *credbrokerv1.CreateCallerKeyRequest, now time.Time) (callers.NewKey, error) {
	in := callers.NewKey{ID: req.GetKeyId(), Description: req.GetCallerKey().GetDescription()}
	if in.ID == "" {
		in.ID = callers.NewID()
	} else if err := checkAccountID("key_id", in.ID); err != nil {
		return in, err
	}
	if err := checkDisplayName("caller_key.description", in.Description); err != nil {
		return in, err
	}
	switch req.GetCallerKey().GetRole() {
	case credbrokerv1.Role_ROLE_ADMIN:
		in.Role = callers.RoleAdmin
	case credbrokerv1.Role_ROLE_CALLER:
		in.Role = callers.RoleCaller
	default:
		return in, invalidArgument("caller_key.role", "must be ROLE_ADMIN or ROLE_CALLER")
	}
	var err error
	in.ExpireTime, err = futureTime("caller_key.expire_time", req.GetCallerKey().GetExpireTime(), now)
	return in, err
}

// futureTime checks an optional timestamp that must lie after now; unset
// is the zero time.
func futureTime(field string, ts *timestamppb.Timestamp, now time.Time) (time.Time, error) {
	if ts == nil {
		return time.Time{}, nil
	}
	if ts.CheckValid() != nil || !ts.AsTime().After(now) {
		return time.Time{}, invalidArgument(field, "must be a valid time in the future")
	}
	return ts.AsTime(), nil
}

// proxyMethods are the HTTP methods the egress proxy forwards, and so those
// a grant can be limited to.
var proxyMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

const (
	maxPathPrefixes = 16
	maxPathPrefix   = 256
)

// grantLimits checks AddAccountGrant's optional limits and returns them
// sorted and without duplicates. Methods are taken as HTTP spells them,
// upper-case: the proxy compares them exactly.
func grantLimits(methods, prefixes []string) (grants.Limits, error) {
	if len(methods) > len(proxyMethods) {
		return grants.Limits{}, invalidArgument("http_methods", fmt.Sprintf("at most %d methods", len(proxyMethods)))
	}
	for _, m := range methods {
		if !slices.Contains(proxyMethods, m) {
			return grants.Limits{}, invalidArgument("http_methods", fmt.Sprintf("%q is not one of %s (upper-case, as HTTP spells them)", gate.Truncate(m, 16), strings.Join(proxyMethods, ", ")))
		}
	}
	if len(prefixes) > maxPathPrefixes {
		return grants.Limits{}, invalidArgument("path_prefixes", fmt.Sprintf("at most %d path prefixes", maxPathPrefixes))
	}
	for _, p := range prefixes {
		if problem := pathPrefixProblem(p); problem != "" {
			return grants.Limits{}, invalidArgument("path_prefixes", fmt.Sprintf("%q %s", gate.Truncate(p, 64), problem))
		}
	}
	return grants.Limits{Methods: sortedSet(methods), PathPrefixes: sortedSet(prefixes)}, nil
}

// pathPrefixProblem says what is wrong with a grant's path prefix, or "".
// A prefix is matched against decoded path segments, so it is written
// decoded: "/" and segments, without percent-encoding.
func pathPrefixProblem(p string) string {
	switch {
	case len(p) > maxPathPrefix:
		return fmt.Sprintf("is longer than %d bytes", maxPathPrefix)
	case !strings.HasPrefix(p, "/"):
		return `must start with "/", e.g. /v2/systemgroups`
	case strings.ContainsAny(p, "?#"):
		return "must be a path only, without a query or fragment"
	case strings.Contains(p, "%"):
		return "must be written decoded, without percent-encoding"
	case !utf8.ValidString(p) || strings.IndexFunc(p, func(r rune) bool { return r == '\\' || unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return "must be UTF-8 without spaces, control characters or backslashes"
	case p == "/":
		return "" // every path
	}
	for _, seg := range strings.Split(p[1:], "/") {
		if seg == "" || seg == "." || seg == ".." {
			return `must not have empty, "." or ".." segments (nor a trailing "/")`
		}
	}
	return ""
}

// sortedSet is vs sorted, without duplicates; nil if empty.
func sortedSet(vs []string) []string {
	if len(vs) == 0 {
		return nil
	}
	return slices.Compact(slices.Sorted(slices.Values(vs)))
}

// CheckAdminPrincipal accepts certificate principals only: a caller key's
// role is fixed when it is created.
func CheckAdminPrincipal(p string) (string, error) {
	if problem := principalProblem(p, true); problem != "" {
		return "", invalidArgument("principal", problem)
	}
	return p, nil
}
