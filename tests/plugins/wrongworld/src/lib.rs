//! A valid component for another world (`other:thing/greeter`): the host must refuse it as
//! not being a gateway plugin.

wit_bindgen::generate!({
    world: "greeting",
    path: "wit",
});

struct Greeter;

impl exports::other::thing::greeter::Guest for Greeter {
    fn greet() -> String {
        "hello from the wrong world".to_string()
    }
}

export!(Greeter);
