"""The browser UI: static HTML/CSS/JS in static/, served by sdstudio.api (talks only to the HTTP API)."""
