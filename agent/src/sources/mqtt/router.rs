//! Topic routing (pure): which configured device a topic belongs to.
//!
//! Exact filters (no wildcard) are looked up in a hash map; wildcard filters are tried in
//! config order. When several filters match (config allows overlaps only when they bind the
//! same patient), the device listed first in the config wins, as it always has.

use std::collections::HashMap;

use super::Subscription;

/// Does an MQTT topic match a filter (`+` one level, `#` this level and every level below)?
///
/// MQTT 3.1.1 §4.7.2: a filter starting with a wildcard does not match a topic starting with
/// `$` (broker topics such as `$SYS/...`).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Topic → device, for every configured MQTT device.
#[derive(Debug, Clone)]
pub struct Router {
    subs: Vec<Subscription>,
    /// Exact filter → index of the first subscription with that filter.
    exact: HashMap<String, usize>,
    /// Indexes of the filters with a wildcard, in config order.
    wildcard: Vec<usize>,
}

impl Router {
    pub fn new(subs: Vec<Subscription>) -> Router {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        for (i, s) in subs.iter().enumerate() {
            if s.filter
                .split('/')
                .any(|level| level == "+" || level == "#")
            {
                wildcard.push(i);
            } else {
                exact.entry(s.filter.clone()).or_insert(i);
            }
        }
        Router {
            subs,
            exact,
            wildcard,
        }
    }

    /// The subscription a topic belongs to (the first in config order that matches).
    pub fn route(&self, topic: &str) -> Option<&Subscription> {
        let exact = self.exact.get(topic).copied();
        let first_wildcard = self
            .wildcard
            .iter()
            .copied()
            .take_while(|&i| exact.is_none_or(|e| i < e))
            .find(|&i| {
                self.subs
                    .get(i)
                    .is_some_and(|s| topic_matches(&s.filter, topic))
            });
        first_wildcard.or(exact).and_then(|i| self.subs.get(i))
    }

    /// Every subscription, in config order.
    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subs
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Attribution;
    use crate::pipeline::DeviceContext;
    use crate::reading::{DeviceClass, DeviceIdentifier, PatientRef};

    fn sub(name: &str, filter: &str) -> Subscription {
        Subscription {
            filter: filter.into(),
            device: Arc::new(DeviceContext {
                name: name.into(),
                class: DeviceClass::Generic,
                identifier: DeviceIdentifier::Local(name.into()),
                attribution: Attribution::Single(PatientRef::Literal { id: "p".into() }),
                utc_offset: chrono::Offset::fix(&chrono::Utc),
                clock_is_provenance_only: false,
                reported: Default::default(),
                upload_statistics: Vec::new(),
            }),
        }
    }

    fn routed<'a>(r: &'a Router, topic: &str) -> Option<&'a str> {
        r.route(topic).map(|s| s.device.name.as_str())
    }

    #[test]
    fn topic_filter_matching() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(topic_matches("a/+/c", "a/x/c"));
        assert!(!topic_matches("a/+/c", "a/x/y"));
        assert!(topic_matches("a/#", "a/x/y"));
        assert!(topic_matches("a/#", "a"), "# also matches its parent level");
        assert!(topic_matches("#", "anything/at/all"));
        assert!(!topic_matches("a/b/c", "a/b"));
        assert!(topic_matches("+", ""), "an empty topic level is a level");
    }

    #[test]
    fn a_leading_wildcard_does_not_match_broker_topics() {
        assert!(!topic_matches("#", "$SYS/broker/uptime"));
        assert!(!topic_matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(topic_matches("$SYS/#", "$SYS/broker/uptime"));
    }

    #[test]
    fn routes_each_of_1000_exact_topics_to_its_own_device() {
        let subs: Vec<Subscription> = (0..1000)
            .map(|i| sub(&format!("dev-{i}"), &format!("clinic/room-{i}/omh")))
            .collect();
        let r = Router::new(subs);
        for i in [0, 1, 500, 999] {
            assert_eq!(
                routed(&r, &format!("clinic/room-{i}/omh")),
                Some(format!("dev-{i}").as_str())
            );
        }
        assert_eq!(routed(&r, "clinic/room-1000/omh"), None);
        assert_eq!(routed(&r, "clinic/room-1"), None);
        assert_eq!(r.subscriptions().len(), 1000);
    }

    #[test]
    fn when_filters_overlap_the_device_listed_first_wins() {
        let r = Router::new(vec![
            sub("wild-first", "hub/bob/+"),
            sub("exact", "hub/bob/bp"),
            sub("wild-later", "hub/#"),
        ]);
        assert_eq!(routed(&r, "hub/bob/bp"), Some("wild-first"));
        assert_eq!(routed(&r, "hub/alice/bp"), Some("wild-later"));

        let r = Router::new(vec![sub("exact", "hub/bob/bp"), sub("wild", "hub/bob/+")]);
        assert_eq!(routed(&r, "hub/bob/bp"), Some("exact"));
        assert_eq!(routed(&r, "hub/bob/weight"), Some("wild"));
    }

    #[test]
    fn an_unknown_topic_routes_nowhere() {
        let r = Router::new(vec![sub("a", "a/b")]);
        assert_eq!(routed(&r, "a/c"), None);
        assert_eq!(routed(&r, ""), None);
    }
}
