//! Switches read from the environment: a name out of a fixed set, or the default with a
//! one-line notice naming what was wrong and what is used instead.

/// The value of the environment variable `name` among `choices` (its spellings and values);
/// `default` where it is unset, and also, with a notice on stderr, where it is none of them.
pub fn choice<T: Copy + PartialEq>(name: &str, choices: &[(&str, T)], default: T) -> T {
    let Ok(v) = std::env::var(name) else {
        return default;
    };
    if let Some(&(_, t)) = choices.iter().find(|(s, _)| *s == v) {
        return t;
    }
    eprintln!(
        "tandem: {name}={v:?} is not {}; using {}",
        spellings(choices),
        choices
            .iter()
            .find(|(_, t)| *t == default)
            .map_or("the default", |(s, _)| s)
    );
    default
}

/// "a, b or c".
fn spellings<T>(choices: &[(&str, T)]) -> String {
    let names: Vec<&str> = choices.iter().map(|(s, _)| *s).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_read_as_a_list() {
        assert_eq!(
            spellings(&[("none", 0), ("a", 1), ("b", 2), ("ab", 3)]),
            "none, a, b or ab"
        );
        assert_eq!(
            spellings(&[("spin", true), ("block", false)]),
            "spin or block"
        );
        assert_eq!(spellings(&[("only", ())]), "only");
    }

    #[test]
    fn choice_reads_a_spelling_and_falls_back_to_the_default() {
        let c = [("x", 1), ("y", 2)];
        std::env::set_var("TANDEM_TEST_CHOICE_SET", "y");
        std::env::set_var("TANDEM_TEST_CHOICE_BAD", "z");
        assert_eq!(choice("TANDEM_TEST_CHOICE_SET", &c, 1), 2);
        assert_eq!(choice("TANDEM_TEST_CHOICE_BAD", &c, 1), 1);
        assert_eq!(choice("TANDEM_TEST_CHOICE_UNSET", &c, 2), 2);
    }
}
