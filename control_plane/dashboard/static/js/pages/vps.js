// The vps page (static/pages/vps.html): registers its Alpine components.
