fn main() {
    print!("{}", reflex::api::crds::render_all().unwrap_or_default());
}
