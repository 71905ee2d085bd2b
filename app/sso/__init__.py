"""Single sign-on for the web pages: OpenID Connect (authorization code + PKCE) through authlib."""
