//! `delegate_admin_storage!(Type)`: implements `AdminStorage` for a test
//! storage that wraps another in a field `inner`, passing every call through
//! (the wrappers change only lease methods). Included with `#[path]`.

macro_rules! delegate_admin_storage {
    ($ty:ty) => {
        impl lighthouse_lease::AdminStorage for $ty {
            async fn create_pool(
                &self,
                pool: lighthouse_lease::ProxyPool,
            ) -> lighthouse_lease::Result<lighthouse_lease::ProxyPool> {
                self.inner.create_pool(pool).await
            }
            async fn get_pool(
                &self,
                name: &lighthouse_lease::PoolName,
            ) -> lighthouse_lease::Result<Option<lighthouse_lease::ProxyPool>> {
                self.inner.get_pool(name).await
            }
            async fn list_pools(
                &self,
            ) -> lighthouse_lease::Result<Vec<lighthouse_lease::ProxyPool>> {
                self.inner.list_pools().await
            }
            async fn update_pool(
                &self,
                pool: lighthouse_lease::ProxyPool,
            ) -> lighthouse_lease::Result<lighthouse_lease::ProxyPool> {
                self.inner.update_pool(pool).await
            }
            async fn remove_pool(
                &self,
                name: &lighthouse_lease::PoolName,
            ) -> lighthouse_lease::Result<bool> {
                self.inner.remove_pool(name).await
            }
            async fn add_proxy(
                &self,
                proxy: lighthouse_lease::Proxy,
            ) -> lighthouse_lease::Result<lighthouse_lease::Proxy> {
                self.inner.add_proxy(proxy).await
            }
            async fn add_proxies(
                &self,
                proxies: Vec<lighthouse_lease::Proxy>,
            ) -> lighthouse_lease::Result<Vec<lighthouse_lease::Proxy>> {
                self.inner.add_proxies(proxies).await
            }
            async fn update_proxy(
                &self,
                proxy: lighthouse_lease::Proxy,
            ) -> lighthouse_lease::Result<lighthouse_lease::Proxy> {
                self.inner.update_proxy(proxy).await
            }
            async fn set_proxy_status(
                &self,
                id: uuid::Uuid,
                status: lighthouse_lease::ProxyStatus,
            ) -> lighthouse_lease::Result<lighthouse_lease::Proxy> {
                self.inner.set_proxy_status(id, status).await
            }
            async fn remove_proxy(&self, id: uuid::Uuid) -> lighthouse_lease::Result<bool> {
                self.inner.remove_proxy(id).await
            }
            async fn get_proxy(
                &self,
                id: uuid::Uuid,
            ) -> lighthouse_lease::Result<Option<lighthouse_lease::Proxy>> {
                self.inner.get_proxy(id).await
            }
            async fn list_proxies(
                &self,
                pool: &lighthouse_lease::PoolName,
            ) -> lighthouse_lease::Result<Vec<lighthouse_lease::Proxy>> {
                self.inner.list_proxies(pool).await
            }
            async fn ensure_consumer(
                &self,
                name: &lighthouse_lease::ConsumerName,
            ) -> lighthouse_lease::Result<lighthouse_lease::Consumer> {
                self.inner.ensure_consumer(name).await
            }
            async fn get_consumer(
                &self,
                name: &lighthouse_lease::ConsumerName,
            ) -> lighthouse_lease::Result<Option<lighthouse_lease::Consumer>> {
                self.inner.get_consumer(name).await
            }
            async fn list_consumers(
                &self,
            ) -> lighthouse_lease::Result<Vec<lighthouse_lease::Consumer>> {
                self.inner.list_consumers().await
            }
        }
    };
}
