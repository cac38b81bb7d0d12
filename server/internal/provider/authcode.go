package provider

import (
	"context"

	"golang.org/x/oauth2"

	"github.com/credbroker/credbroker/server/internal/secret"
)

// An authorization-code account is linked by sending its user's browser to
// the provider's sign-in page (AuthorizationURL), with a state that the
// broker checks when the browser comes back and a PKCE challenge (S256)
// whose verifier only the broker knows; the code the provider sends back
// is exchanged for an access token and a refresh token (Exchange). Fetch
// then refreshes with the stored refresh token; the provider may rotate
// it, and Token.RefreshToken carries the new one.

// codeConfig is x/oauth2's view of an authorization-code account.
func codeConfig(cr Credentials, redirectURI string) *oauth2.Config {
	style := oauth2.AuthStyleInHeader
	if cr.AuthStyle == AuthStyleBody {
		style = oauth2.AuthStyleInParams
	}
	return &oauth2.Config{
		ClientID:     cr.ClientID,
		ClientSecret: cr.ClientSecret.Reveal(),
		Endpoint:     oauth2.Endpoint{AuthURL: cr.AuthURL, TokenURL: cr.TokenURL, AuthStyle: style},
		RedirectURL:  redirectURI,
		Scopes:       cr.Scopes,
	}
}

// AuthorizationURL is where to send the browser to sign in: the account's
// authorization URL with its client id, scopes and extra parameters, the
// redirect URI, state and the S256 challenge of verifier.
func AuthorizationURL(cr Credentials, redirectURI, state, verifier string) string {
	opts := []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}
	for k, v := range cr.AuthParams {
		opts = append(opts, oauth2.SetAuthURLParam(k, v))
	}
	return codeConfig(cr, redirectURI).AuthCodeURL(state, opts...)
}

// Exchange trades the code the provider sent back for the account's first
// tokens. The answer must hold a refresh token: without one the account
// could not be refreshed.
func (c *Client) Exchange(ctx context.Context, cr Credentials, redirectURI, code, verifier string) (Token, error) {
	tok, err := c.request(ctx, cr, func(ctx context.Context) (*oauth2.Token, error) {
		tok, err := codeConfig(cr, redirectURI).Exchange(ctx, code, oauth2.VerifierOption(verifier))
		if err != nil {
			return nil, classifyEchoing(err, secret.NewDetector(cr.ClientSecret, cr.ClientID).And(secret.NewDetector(secret.New(code), "")))
		}
		return tok, nil
	})
	if err == nil && tok.RefreshToken.IsZero() {
		return Token{}, ErrNoRefreshToken
	}
	return tok, err
}

// refresh gets a new access token with the account's refresh token.
func (c *Client) refresh(ctx context.Context, cr Credentials) (Token, error) {
	return c.request(ctx, cr, func(ctx context.Context) (*oauth2.Token, error) {
		tok, err := codeConfig(cr, "").TokenSource(ctx, &oauth2.Token{RefreshToken: cr.RefreshToken.Reveal()}).Token()
		if err != nil {
			return nil, classify(err, cr)
		}
		return tok, nil
	})
}

// request makes one token request of an authorization-code account, to
// its token URL only.
func (c *Client) request(ctx context.Context, cr Credentials, do func(context.Context) (*oauth2.Token, error)) (Token, error) {
	if err := usable("token URL", cr.TokenURL); err != nil {
		return Token{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	tok, err := do(context.WithValue(ctx, oauth2.HTTPClient, c.http))
	if err != nil {
		return Token{}, err
	}
	return c.token(tok, oauth2ExpiryMargin, cr.DefaultLifetime)
}

// CallbackError is the error a provider sent the browser back with
// (error, error_description), fit to show: an error code only if shaped
// like one, a description of printable characters, bounded; each
// withheld whole if echo finds a secret in it.
func CallbackError(code, description string, echo secret.Detector) (string, string) {
	return providerCode(code, echo), providerText(description, maxDescriptionLen, echo)
}
