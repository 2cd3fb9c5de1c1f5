// The environments page (static/pages/environments.html): registers its Alpine components.
