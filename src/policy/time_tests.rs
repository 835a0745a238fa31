use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn window(days: &[Weekday], start: &str, end: &str, tz: &str) -> Window {
    Window::parse(&TimeWindow {
        days: days.to_vec(),
        start: start.into(),
        end: end.into(),
        time_zone: tz.into(),
    })
    .unwrap()
}

fn blackout(start: &str, end: &str, tz: &str) -> Result<Period, String> {
    Period::parse(&Blackout {
        start: start.into(),
        end: end.into(),
        time_zone: tz.into(),
        reason: "Holiday freeze".into(),
    })
}

use Weekday::*;
const WEEKDAYS: &[Weekday] = &[Monday, Tuesday, Wednesday, Thursday];

/// (window, instant, open?) for edges, wrapping, days in the zone and DST in two zones.
#[test]
fn window_is_open_table() {
    let ny_business = window(WEEKDAYS, "06:00", "18:00", "America/New_York");
    let night = window(&[Friday], "22:00", "06:00", "UTC");
    let evening = window(&[Monday], "18:00", "24:00", "UTC");
    // Spring forward in New York, Sunday 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00Z).
    let ny_gap = window(&[Sunday], "02:30", "04:00", "America/New_York");
    // Fall back in New York, Sunday 2026-11-01: 02:00 EDT becomes 01:00 EST (06:00Z).
    let ny_overlap = window(&[Sunday], "01:30", "02:00", "America/New_York");
    // Spring forward in London, Sunday 2026-03-29: 01:00 GMT jumps to 02:00 BST (01:00Z).
    let london_gap = window(&[Sunday], "01:00", "02:00", "Europe/London");
    // Fall back in London, Sunday 2026-10-25: 02:00 BST becomes 01:00 GMT (01:00Z).
    let london_overlap = window(&[Sunday], "00:30", "01:30", "Europe/London");
    // Weekday in the zone: Thursday 20:00 in Los Angeles is Friday 04:00Z.
    let la_thursday = window(&[Thursday], "19:00", "21:00", "America/Los_Angeles");
    let table = [
        (
            &ny_business,
            "2026-11-23T11:00:00Z",
            true,
            "start is inclusive (06:00 EST)",
        ),
        (
            &ny_business,
            "2026-11-23T10:59:59Z",
            false,
            "a second before start",
        ),
        (
            &ny_business,
            "2026-11-23T22:59:59Z",
            true,
            "a second before end",
        ),
        (
            &ny_business,
            "2026-11-23T23:00:00Z",
            false,
            "end is exclusive (18:00 EST)",
        ),
        (
            &ny_business,
            "2026-11-27T15:00:00Z",
            false,
            "Friday is not listed",
        ),
        (
            &ny_business,
            "2026-07-06T10:00:00Z",
            true,
            "06:00 EDT in summer is 10:00Z",
        ),
        (&night, "2026-11-20T22:00:00Z", true, "opens Friday 22:00"),
        (
            &night,
            "2026-11-21T05:59:00Z",
            true,
            "still open Saturday morning: it belongs to Friday",
        ),
        (
            &night,
            "2026-11-21T06:00:00Z",
            false,
            "closes Saturday 06:00",
        ),
        (
            &night,
            "2026-11-21T22:30:00Z",
            false,
            "Saturday night is not listed",
        ),
        (
            &evening,
            "2026-11-23T23:59:59Z",
            true,
            "24:00 is the end of Monday",
        ),
        (
            &evening,
            "2026-11-24T00:00:00Z",
            false,
            "Tuesday midnight is closed",
        ),
        (&ny_gap, "2026-03-08T06:59:00Z", false, "before the jump"),
        (
            &ny_gap,
            "2026-03-08T07:00:00Z",
            true,
            "02:30 does not exist: opens at the jump, 03:00 EDT",
        ),
        (&ny_gap, "2026-03-08T07:59:00Z", true, "03:59 EDT"),
        (&ny_gap, "2026-03-08T08:00:00Z", false, "04:00 EDT closes"),
        (&ny_overlap, "2026-11-01T05:29:00Z", false, "01:29 EDT"),
        (
            &ny_overlap,
            "2026-11-01T05:30:00Z",
            true,
            "the first 01:30 (EDT) opens",
        ),
        (
            &ny_overlap,
            "2026-11-01T06:30:00Z",
            true,
            "the second 01:30 (EST) is still inside",
        ),
        (
            &ny_overlap,
            "2026-11-01T07:00:00Z",
            false,
            "02:00 EST closes",
        ),
        (&london_gap, "2026-03-29T00:59:00Z", false, "00:59 GMT"),
        (
            &london_gap,
            "2026-03-29T01:00:00Z",
            false,
            "01:00-02:00 does not exist that night: empty window",
        ),
        (
            &london_gap,
            "2026-04-05T00:30:00Z",
            true,
            "next Sunday 01:30 BST",
        ),
        (
            &london_overlap,
            "2026-10-24T23:30:00Z",
            true,
            "00:30 BST opens",
        ),
        (
            &london_overlap,
            "2026-10-25T00:29:00Z",
            true,
            "01:29 BST, first occurrence",
        ),
        (
            &london_overlap,
            "2026-10-25T00:30:00Z",
            false,
            "the first 01:30 BST closes",
        ),
        (
            &london_overlap,
            "2026-10-25T01:15:00Z",
            false,
            "the second 01:15 (GMT) is after the close",
        ),
        (
            &la_thursday,
            "2026-11-20T04:00:00Z",
            true,
            "Thursday 20:00 PST is Friday in UTC",
        ),
        (
            &la_thursday,
            "2026-11-19T20:00:00Z",
            false,
            "Thursday 20:00 UTC is noon in Los Angeles",
        ),
    ];
    for (w, t, open, why) in table {
        assert_eq!(w.is_open(utc(t)), open, "{t}: {why}");
    }
}

#[test]
fn next_open_table() {
    let ny_business = window(WEEKDAYS, "06:00", "18:00", "America/New_York");
    let night = window(&[Friday], "22:00", "06:00", "UTC");
    let london_gap = window(&[Sunday], "01:00", "02:00", "Europe/London");
    let table = [
        (
            &ny_business,
            "2026-11-21T12:00:00Z",
            "2026-11-23T11:00:00Z",
            "Saturday → Monday 06:00 EST",
        ),
        (
            &ny_business,
            "2026-11-23T12:00:00Z",
            "2026-11-23T12:00:00Z",
            "already open",
        ),
        (
            &ny_business,
            "2026-11-26T23:00:00Z",
            "2026-11-30T11:00:00Z",
            "Thursday after close → next Monday",
        ),
        (
            &ny_business,
            "2026-03-06T23:00:00Z",
            "2026-03-09T10:00:00Z",
            "across spring forward: 06:00 EDT",
        ),
        (
            &night,
            "2026-11-21T07:00:00Z",
            "2026-11-27T22:00:00Z",
            "a week later",
        ),
        (
            &london_gap,
            "2026-03-28T12:00:00Z",
            "2026-04-05T00:00:00Z",
            "skips the empty night",
        ),
    ];
    for (w, from, want, why) in table {
        assert_eq!(w.next_open(utc(from)), Some(utc(want)), "{why}");
    }
}

#[test]
fn window_parse_errors() {
    let bad = |days: &[Weekday], start: &str, end: &str, tz: &str| {
        Window::parse(&TimeWindow {
            days: days.to_vec(),
            start: start.into(),
            end: end.into(),
            time_zone: tz.into(),
        })
        .unwrap_err()
    };
    assert_eq!(
        bad(&[], "06:00", "18:00", "UTC"),
        "window has no days: list at least one day, e.g. [monday, tuesday]"
    );
    assert!(
        bad(&[Monday], "06:00", "18:00", "Mars/Olympus")
            .contains("unknown time zone \"Mars/Olympus\"")
    );
    assert_eq!(
        bad(&[Monday], "6am", "18:00", "UTC"),
        "time \"6am\" is not HH:MM"
    );
    assert_eq!(
        bad(&[Monday], "25:00", "18:00", "UTC"),
        "time \"25:00\" is not HH:MM"
    );
    assert_eq!(
        bad(&[Monday], "24:00", "18:00", "UTC"),
        "window start \"24:00\" must be before 24:00"
    );
    assert!(bad(&[Monday], "09:00", "09:00", "UTC").contains("are the same"));
}

#[test]
fn blackouts() {
    let err = blackout("2026-12-20", "2026-01-02", "UTC").unwrap_err();
    assert_eq!(
        err,
        "blackout \"Holiday freeze\": end 2026-01-02 is before its start 2026-12-20"
    );
    let freeze = blackout("2026-12-20", "2027-01-02", "UTC").unwrap();
    let table = [
        ("2026-12-19T23:59:59Z", false),
        ("2026-12-20T00:00:00Z", true),
        ("2027-01-02T23:59:59Z", true),
        ("2027-01-03T00:00:00Z", false),
    ];
    for (t, inside) in table {
        assert_eq!(freeze.contains(utc(t)), inside, "{t}");
    }
    let ny = blackout("2026-11-26T17:00", "2026-11-27T09:00", "America/New_York").unwrap();
    assert_eq!(
        (ny.start, ny.end),
        (utc("2026-11-26T22:00:00Z"), utc("2026-11-27T14:00:00Z"))
    );
    assert!(
        blackout("2026-11-26", "2026-11-27T09:00", "UTC")
            .unwrap_err()
            .contains("must both be dates")
    );
    assert!(
        blackout("2026-11-26T10:00", "2026-11-26T10:00", "UTC")
            .unwrap_err()
            .contains("is the same moment as")
    );
    assert!(
        blackout("2026-11-26", "2026-11-27", "Nowhere/Land")
            .unwrap_err()
            .contains("unknown time zone")
    );
    assert!(
        blackout("2026-02-30", "2026-03-01", "UTC")
            .unwrap_err()
            .contains("neither a date")
    );
}

/// At the edges of time (an `--at` near the largest instant chrono represents) windows answer
/// instead of overflowing.
#[test]
fn windows_at_the_edges_of_time_do_not_overflow() {
    let w = window(
        &[Weekday::Monday, Weekday::Saturday],
        "22:00",
        "02:00",
        "Pacific/Auckland",
    );
    for t in [
        DateTime::<Utc>::MAX_UTC,
        DateTime::<Utc>::MAX_UTC - chrono::Duration::days(3),
        DateTime::<Utc>::MIN_UTC,
    ] {
        let _ = w.is_open(t);
        let _ = w.next_open(t);
    }
}
