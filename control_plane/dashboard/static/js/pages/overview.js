// The overview page (static/pages/overview.html): registers its Alpine components.
