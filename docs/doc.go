// Package docs holds halo's design and reference documents (the Markdown
// files beside this one) and, in its test, the check that every relative
// link in the repository's Markdown resolves and that the repository refers
// to nothing outside itself.
package docs
