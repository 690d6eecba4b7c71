//! Switches read from the environment: a name out of a fixed set (an on/off switch, a count in
//! a range), or the default with a one-line notice naming what was wrong and what is used
//! instead.

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

/// An on/off switch: `name=1` or `name=0`; `default` where it is unset, and also, with a
/// notice, where it is anything else.
pub fn switch(name: &str, default: bool) -> bool {
    choice(name, &[("1", true), ("0", false)], default)
}

/// A count from `name` within `range`: `None` where it is unset, and also, with a notice
/// saying what was expected, where it does not parse or lies outside the range (the caller
/// then uses its default).
pub fn count(name: &str, range: std::ops::RangeInclusive<usize>) -> Option<usize> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse::<usize>() {
        Ok(n) if range.contains(&n) => Some(n),
        _ => {
            eprintln!(
                "tandem: {name}={v:?} is not a count in {}..={}; using the default",
                range.start(),
                range.end()
            );
            None
        }
    }
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

    #[test]
    fn switches_and_counts_fall_back_on_bad_values() {
        std::env::set_var("TANDEM_TEST_SWITCH_ON", "1");
        std::env::set_var("TANDEM_TEST_SWITCH_BAD", "yes");
        assert!(switch("TANDEM_TEST_SWITCH_ON", false));
        assert!(switch("TANDEM_TEST_SWITCH_BAD", true));
        assert!(!switch("TANDEM_TEST_SWITCH_UNSET", false));
        std::env::set_var("TANDEM_TEST_COUNT_OK", " 3 ");
        std::env::set_var("TANDEM_TEST_COUNT_HIGH", "65");
        std::env::set_var("TANDEM_TEST_COUNT_BAD", "two");
        assert_eq!(count("TANDEM_TEST_COUNT_OK", 1..=64), Some(3));
        assert_eq!(count("TANDEM_TEST_COUNT_HIGH", 1..=64), None);
        assert_eq!(count("TANDEM_TEST_COUNT_BAD", 1..=64), None);
        assert_eq!(count("TANDEM_TEST_COUNT_UNSET", 1..=64), None);
    }
}
